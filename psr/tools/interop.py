"""Step-DPO interop: our `PPDPair` records <-> the Step-DPO dataset layout.

The layout is that of xinlai/Math-Step-DPO-10K (Lai et al. 2024, dvlab-research/Step-DPO), which
Step-DPO-style trainers read: `prompt` (the question text), `initial_reason_steps`
(`"Let's think step by step.\\nStep 1: ...\\nStep 2: ...\\n"`, the steps before the pair),
`chosen` and `rejected` (`"Step k: ..."`, one step each). Their trainer formats the prompt with
its own chat template, so we export the bare question, not our chat-formatted prefix.

What the layout cannot carry: `id`, `scores`, `iteration`, and whether a step ended with EOS
rather than a `\\boxed{}` answer. `export_step_dpo(..., extras=True)` adds our fields as extra
columns (Step-DPO ignores unknown columns) so a round trip is lossless; without them the import
derives `is_final` / `rejected_is_final` from `\\boxed{}`, makes a content-hash id, leaves
`scores` empty and takes `iteration` from the caller.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

from psr.io import RecordError, read_jsonl, write_jsonl
from psr.records import PPDPair
from psr.steps import STEP_MARKER, StepFormatError, is_final, prefix_text, render_step, split_steps
from psr.tasks.sources import Source

HEADER = "Let's think step by step.\n"
FIELDS = ("prompt", "initial_reason_steps", "chosen", "rejected")
EXTRAS = ("id", "is_final", "rejected_is_final", "scores", "iteration")


def to_step_dpo(pair: PPDPair, extras: bool = False) -> dict[str, Any]:
    """One pair as a Step-DPO row."""
    k = len(pair.previous_steps) + 1
    row: dict[str, Any] = {
        "prompt": pair.question,
        "initial_reason_steps": HEADER + prefix_text(pair.previous_steps),
        "chosen": render_step(k, pair.chosen),
        "rejected": render_step(k, pair.rejected),
    }
    if extras:
        row.update({name: getattr(pair, name) for name in EXTRAS})
    return row


def _text(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        got = "missing" if name not in row else f"got {type(value).__name__}"
        raise RecordError(f"{where}: field {name!r} must be a string ({got})")
    return value


def _one_step(row: dict, name: str, number: int, where: str) -> str:
    """The content of a `Step k: ...` field, checking that k follows the earlier steps."""
    text = _text(row, name, where).lstrip("\n")
    m = STEP_MARKER.match(text)
    if not m:
        raise RecordError(f"{where}: field {name!r} must start with 'Step {number}:' (got {text[:40]!r})")
    if int(m.group(1)) != number:
        raise RecordError(f"{where}: field {name!r} is step {m.group(1)}, but initial_reason_steps "
                          f"holds {number - 1} steps (expected 'Step {number}:')")
    content = text[m.end():]
    if STEP_MARKER.search(content):
        raise RecordError(f"{where}: field {name!r} holds more than one step")
    content = content.strip()
    if not content:
        raise RecordError(f"{where}: field {name!r} has an empty step")
    return content


def from_step_dpo(row: Any, where: str, iteration: int = 0) -> PPDPair:
    """One Step-DPO row as a `PPDPair`; `RecordError` naming `where` and the field otherwise."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _text(row, "prompt", where)
    if not question.strip():
        raise RecordError(f"{where}: field 'prompt' is empty")
    initial = _text(row, "initial_reason_steps", where)
    body = initial.lstrip()
    if body.startswith(HEADER.strip()):
        body = body[len(HEADER.strip()):]
    try:
        previous = split_steps(body) if body.strip() else []
    except StepFormatError as e:
        raise RecordError(f"{where}: field 'initial_reason_steps' is not 'Step n:' steps: {e}") from None
    k = len(previous) + 1
    chosen = _one_step(row, "chosen", k, where)
    rejected = _one_step(row, "rejected", k, where)
    pair = PPDPair(
        id=f"stepdpo-{hashlib.sha1(repr((question, previous, chosen, rejected)).encode()).hexdigest()[:12]}",
        question=question, previous_steps=previous, chosen=chosen, rejected=rejected,
        is_final=is_final(chosen), scores=[], iteration=iteration, rejected_is_final=is_final(rejected),
    )
    return _apply_extras(pair, row, where)


def _apply_extras(pair: PPDPair, row: dict, where: str) -> PPDPair:
    checks = {
        "id": lambda v: isinstance(v, str) and v != "",
        "is_final": lambda v: isinstance(v, bool),
        "rejected_is_final": lambda v: isinstance(v, bool),
        "scores": lambda v: isinstance(v, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in v),
        "iteration": lambda v: isinstance(v, int) and not isinstance(v, bool),
    }
    for name, ok in checks.items():
        if name in row and row[name] is not None:
            if not ok(row[name]):
                raise RecordError(f"{where}: field {name!r} has the wrong type ({row[name]!r})")
            setattr(pair, name, row[name])
    return pair


def export_step_dpo(pairs: Iterable[PPDPair], path: str | Path, extras: bool = False) -> None:
    """Write pairs as a Step-DPO JSON-lines file (atomic, via `psr.io`)."""
    write_jsonl(path, [to_step_dpo(p, extras) for p in pairs])


def import_step_dpo(path: str | Path, iteration: int = 0) -> list[PPDPair]:
    """Read a Step-DPO JSON-lines file; a bad row raises `RecordError` naming file:line and field."""
    path = Path(path)
    rows = read_jsonl(path)
    with open(path, encoding="utf-8") as f:
        lines = [i for i, line in enumerate(f, start=1) if line.strip()]
    return [from_step_dpo(row, f"{path}:{line}", iteration) for row, line in zip(rows, lines)]


def load_step_dpo(spec: str, iteration: int = 0, cache_dir: str | None = None) -> list[PPDPair]:
    """Any source spec of `psr.tasks.sources` (e.g. `hub:xinlai/Math-Step-DPO-10K`, a parquet file)."""
    source = Source(spec, cache_dir)
    return [from_step_dpo(row, where, iteration) for where, row in source.rows()]
