"""Real-data task for the paper presets: IFT from NuminaMath-CoT (or GSM8K/MATH train offline),
step-pair EFT and solution-scoring EFT from PRM800K, and question pools for the search.

**Source specs** (`task.ift_source`, `task.eft_source`, `task.question_source`) are strings:

- `hub:OWNER/NAME` — a Hugging Face hub dataset through `datasets.load_dataset`, split `train`.
  Options after `?`, `&`-separated: `split=test`, `config=NAME`, `files=a.jsonl,b.jsonl` (data
  files inside the repo, each loaded on its own so that files with different schemas — PRM800K's
  phase 1 and phase 2 — never have to agree). Example:
  `hub:tasksource/PRM800K?files=phase1_train.jsonl,phase2_train.jsonl`.
- anything else is local: a `.jsonl`/`.json`/`.parquet` file, a folder (every such file in it,
  sorted), a glob, or several of these separated by `,`. `$VARS` and `~` are expanded, so a
  preset can say `$PSR_DATASET_DIR/math/train.jsonl`. Local files are read by
  `load_dataset("json"|"parquet", data_files=...)` as well, so both paths give the same rows.

A malformed row raises `psr.io.RecordError` naming the file, the 1-based line (for JSON lines;
`row N` otherwise) and the field. Rows are checked when they are read; a builder reads the rows
it samples (in a seeded order) until it has enough, so a huge hub set is never fully parsed.

**Schemas** are recognised by field names: `problem` + `solution` (NuminaMath-CoT, MATH train),
`question` + `answer` with `#### N` (GSM8K train); PRM800K lines with `question.problem` and
`label.steps[].completions[] {text, rating, flagged}`, `chosen_completion`, `human_completion`.

**What is built** (`build_real_task(params, seed) -> RealTask`):

- `ift`: solutions segmented into steps by the rule-based `psr.steps.segment_solution`
  (`llm_segment` is the paper's LLM segmentation, with Figure 3's format, for whoever has a
  strong local model). Rows without a `\\boxed{}` answer and rows that already carry `Step n:`
  markers are skipped; GSM8K's calculator annotations `<<48/2=24>>` are removed (tool markup,
  not reasoning) and `#### N` becomes `The answer is \\boxed{N}.`.
- `eft` / `eft_test`: PRM800K steps at which labellers rated one alternative +1 and another -1
  give a pair (good, bad), with the question and the earlier steps (the completions chosen at the
  earlier steps). `n_eft` and `n_eft_test` count *pairs*, like the paper's 4,167 / 500. A training
  pair is written in both orders (A/B and B/A: position balance); a test pair once, verdict slots
  balanced, since the judging stage swaps the order itself. The test split is held out by
  question. Judgments are templated (`templated_judgment`) unless a `judgment_fn` (a teacher
  model) is given; a pair whose teacher judgment disagrees with the labels in either order is
  dropped, as the paper keeps only pairs on which o1 agrees with the PRM in both orders.
- `srlm_eft`: whole PRM800K solutions for the SRLM baseline: every step rated >= 0 and finished
  with the right answer -> `Score: 5`; a step rated -1 -> `Score: 1`; half and half.
- `pools`: `Question`s (no gold) for the search iterations, sizes `task.questions_per_iteration`,
  disjoint from each other and from the IFT questions; only questions whose source solution has a
  `\\boxed{}` answer (so the search can finish).
- `test`: empty (the benchmarks live in `psr.tasks.benchmarks`).

Held out: questions of the evaluation benchmarks (exact match after whitespace normalisation,
when `eval.benchmark_dir` / `$PSR_BENCHMARK_DIR` holds them) are kept out of every split — PRM800K
contains 4,500 MATH test problems, which would otherwise leak into the judge's training data —
and the judge's test questions are kept out of IFT, SRLM EFT and the pools (an IFT solution to a
test question would tell the judge which step is right).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from psr.io import RecordError
from psr.records import EFTRecord, IFTRecord, Question, SRLMEFTRecord
from psr.tasks.synthetic import SyntheticTask
from psr.steps import (
    STEP_MARKER,
    STOP_STRING,
    StepFormatError,
    is_final,
    join_steps,
    segment_solution,
    split_steps,
)
from psr.config import ModelParams
from psr.models import load_policy
from psr.prompts import chat_prompt
from psr.prompts import parse_verdict
from psr.tasks.benchmarks import BENCHMARKS, load_benchmark

HUB_PREFIX = "hub:"
_LOCAL_EXTS = (".jsonl", ".json", ".parquet")

# Figure 3 of the paper (the o1 segmentation prompt), reworded; same section markers and rules.
SEGMENT_PROMPT = (
    "Below are a math problem and a worked solution to it. Split the solution into its logical "
    "steps. Start every step with \"Step n: \", where n is the step number, counting from 1. Do "
    "not change, add or remove anything in the solution: only split it. Keep the final answer, "
    "which is written in \\boxed{{}}. Output the steps in this format and nothing else.\n\n"
    "[The Start of Question Provided]\n{question}\n[The End of Question Provided]\n\n"
    "[The Start of Solution Provided]\n{solution}\n[The End of Solution Provided]"
)


# ============================================================================ sources


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec: a hub dataset (`name`, `split`, `config`, `files`) or local `paths`."""

    text: str
    hub: bool
    name: str = ""
    split: str = "train"
    config: str | None = None
    files: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


def parse_source(spec: str) -> SourceSpec:
    """Parse a source spec (see the module docstring); ValueError on an unusable one."""
    text = (spec or "").strip()
    if not text:
        raise ValueError("empty source spec: give `hub:OWNER/NAME` or a local file/folder")
    if text.startswith(HUB_PREFIX):
        rest = text[len(HUB_PREFIX):]
        name, _, query = rest.partition("?")
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
            raise ValueError(f"source {spec!r}: hub name must look like OWNER/NAME")
        options: dict[str, str] = {}
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or key not in ("split", "config", "files"):
                raise ValueError(f"source {spec!r}: unknown option {item!r} (split=, config=, files=)")
            options[key] = value
        files = tuple(f for f in options.get("files", "").split(",") if f)
        return SourceSpec(text, True, name=name, split=options.get("split", "train"),
                          config=options.get("config") or None, files=files)
    paths: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        expanded = os.path.expanduser(os.path.expandvars(part))
        path = Path(expanded)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix in _LOCAL_EXTS)
        elif any(c in expanded for c in "*?["):
            found = sorted(p for p in glob.glob(expanded) if Path(p).suffix in _LOCAL_EXTS)
        else:
            found = [expanded]
        if not found:
            raise ValueError(f"source {spec!r}: no .jsonl/.json/.parquet files in {part!r}")
        for p in found:
            if not Path(p).is_file():
                raise FileNotFoundError(f"source {spec!r}: no such file {p!r} (for a hub dataset write hub:OWNER/NAME)")
            if Path(p).suffix not in _LOCAL_EXTS:
                raise ValueError(f"source {spec!r}: {p!r} is not .jsonl, .json or .parquet")
        paths.extend(found)
    return SourceSpec(text, False, paths=tuple(paths))


@dataclass
class _Part:
    label: str  # file path or hub name, for error messages
    dataset: Any  # datasets.Dataset
    lines: list[int] | None  # 1-based line of each row (JSON lines), else None


class Source:
    """The rows of one source spec, loaded through `datasets`, each with a location for errors."""
    def __init__(self, spec: str, cache_dir: str | None = None):
        self.spec = parse_source(spec)
        self.parts: list[_Part] = []
        if self.spec.hub:
            for data_file in self.spec.files or (None,):
                self.parts.append(self._load_hub(data_file, cache_dir))
        else:
            for path in self.spec.paths:
                self.parts.append(self._load_local(path, cache_dir))
        self._offsets = []
        total = 0
        for part in self.parts:
            self._offsets.append(total)
            total += len(part.dataset)
        self._len = total

    def _load_hub(self, data_file: str | None, cache_dir: str | None) -> _Part:
        from datasets import load_dataset

        s = self.spec
        label = f"{HUB_PREFIX}{s.name}" + (f"/{data_file}" if data_file else f"[{s.split}]")
        kwargs: dict[str, Any] = {"split": "train" if data_file else s.split, "cache_dir": cache_dir}
        if data_file:
            kwargs["data_files"] = data_file
        try:
            ds = load_dataset(s.name, s.config, **kwargs)
        except Exception as e:
            raise RuntimeError(
                f"cannot load {label}: {type(e).__name__}: {str(e)[:300]} "
                "(offline? give a local .jsonl/.parquet path instead; see psr.tasks.real)"
            ) from e
        return _Part(label, ds, None)

    def _load_local(self, path: str, cache_dir: str | None) -> _Part:
        from datasets import load_dataset

        builder = "parquet" if path.endswith(".parquet") else "json"
        try:
            ds = load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
        except Exception as e:
            _diagnose_json_lines(path)  # raises a RecordError naming the line when it can
            raise RecordError(f"{path}: cannot be read as {builder}: {type(e).__name__}: {str(e)[:300]}") from None
        lines = None
        if path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                numbers = [i for i, line in enumerate(f, start=1) if line.strip()]
            if len(numbers) == len(ds):  # JSON lines (a .json array has one row per element)
                lines = numbers
        return _Part(path, ds, lines)

    def __len__(self) -> int:
        return self._len

    def where(self, index: int) -> str:
        part, local = self._locate(index)
        if part.lines is not None:
            return f"{part.label}:{part.lines[local]}"
        return f"{part.label}: row {local + 1}"

    def _locate(self, index: int) -> tuple[_Part, int]:
        if not 0 <= index < self._len:
            raise IndexError(index)
        for part, offset in zip(reversed(self.parts), reversed(self._offsets)):
            if index >= offset:
                return part, index - offset
        raise IndexError(index)  # pragma: no cover

    def columns(self) -> set[str]:
        cols: set[str] = set()
        for part in self.parts:
            cols |= set(part.dataset.column_names)
        return cols

    def rows(self, order: Sequence[int] | None = None, chunk: int = 512) -> Iterator[tuple[str, dict]]:
        """(location, row) in the given order of global indices (default: file order)."""
        if order is None:  # sequential: stream each part (fast for a full pass over PRM800K)
            for part, offset in zip(self.parts, self._offsets):
                for local, row in enumerate(part.dataset):
                    yield self.where(offset + local), row
            return
        indices = order
        for start in range(0, len(indices), chunk):
            block = list(indices[start:start + chunk])
            by_part: dict[int, list[tuple[int, int]]] = {}
            for pos, index in enumerate(block):
                part, local = self._locate(index)
                by_part.setdefault(id(part), []).append((pos, local))
            fetched: list[Any] = [None] * len(block)
            for part in self.parts:
                wanted = by_part.get(id(part))
                if wanted:
                    rows = part.dataset.select([local for _, local in wanted]).to_list()
                    for (pos, _), row in zip(wanted, rows):
                        fetched[pos] = row
            for index, row in zip(block, fetched):
                yield self.where(index), row


def _diagnose_json_lines(path: str) -> None:
    """When `datasets` refuses a JSON-lines file, find the line it choked on."""
    if not path.endswith(".jsonl"):
        return
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise RecordError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")


def load_source(spec: str, cache_dir: str | None = None) -> Source:
    return Source(spec, cache_dir)


# ============================================================================ small helpers


def normalize_question(text: str) -> str:
    """The key under which two questions count as the same (whitespace-insensitive)."""
    return " ".join(text.split())


def _hash(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:12]


def _content_key(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _require_str(row: dict, name: str, where: str, label: str | None = None) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"got {type(value).__name__} {str(value)[:40]!r}"
        raise RecordError(f"{where}: field {label or name!r} must be a non-empty string ({got})")
    return value


def _seeded(seed: int, name: str) -> random.Random:
    return random.Random(f"psr-real:{seed}:{name}")


def _permutation(n: int, seed: int, name: str) -> list[int]:
    order = list(range(n))
    _seeded(seed, name).shuffle(order)
    return order


def _merge_after_first_final(steps: list[str]) -> list[str]:
    """Everything from the first `\\boxed{}` step on becomes one final step (search stops there)."""
    finals = [i for i, s in enumerate(steps) if is_final(s)]
    if finals and finals[0] < len(steps) - 1:
        return steps[: finals[0]] + [" ".join(steps[finals[0]:])]
    return steps


# ============================================================================ IFT


@dataclass
class RawSolution:
    """A question with a worked solution as the source wrote it (after format normalisation)."""
    id: str
    question: str
    solution: str


_GSM8K_CALC = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def solution_schema(columns: set[str]) -> str:
    """'problem' (NuminaMath-CoT, MATH: problem + solution) or 'gsm8k' (question + answer)."""
    if {"problem", "solution"} <= columns:
        return "problem"
    if {"question", "answer"} <= columns:
        return "gsm8k"
    raise ValueError(
        f"unrecognised solution schema with fields {sorted(columns)}: expected problem+solution "
        "(NuminaMath-CoT, MATH) or question+answer (GSM8K)"
    )


def read_solution_row(row: dict, where: str, schema: str) -> RawSolution:
    """One source row as a `RawSolution`; RecordError naming the field when it is unusable."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    if schema == "problem":
        question = _require_str(row, "problem", where)
        solution = _require_str(row, "solution", where).strip()
    else:
        question = _require_str(row, "question", where)
        answer = _require_str(row, "answer", where)
        m = _GSM8K_FINAL.search(answer)
        if not m:
            raise RecordError(f"{where}: field 'answer' has no final '#### N' line")
        body = _GSM8K_CALC.sub("", answer[: m.start()]).rstrip()
        final = m.group(1).replace(",", "")
        solution = f"{body}\nThe answer is \\boxed{{{final}}}.".strip()
    return RawSolution(id=f"ift-{_hash(normalize_question(question))}", question=question.strip(), solution=solution)


def usable_solution(raw: RawSolution) -> str | None:
    """Why a solution cannot become IFT data (None when it can)."""
    if "\\boxed" not in raw.solution:
        return "no_boxed"
    if STEP_MARKER.search(raw.solution) or STEP_MARKER.search(raw.question):
        return "has_step_markers"  # would clash with our own `Step n:` numbering
    return None


# Our choice: one sentence (or display block) per step. The paper's o1 steps are fine-grained
# (Table 7: M1 writes 5.9 steps on GSM8K, 9.4 on MATH); two sentences per step gave MATH train
# solutions 2.4 steps on average, one sentence gives 3.6.
SENTENCES_PER_STEP = 1


def rule_segment(raw: RawSolution, max_sentences_per_step: int = SENTENCES_PER_STEP) -> IFTRecord:
    """Rule-based segmentation (`psr.steps.segment_solution`), content preserved."""
    steps = _merge_after_first_final(segment_solution(raw.solution, max_sentences_per_step))
    return IFTRecord(id=raw.id, question=raw.question, steps=steps)


def accept_segmentation(output: str, solution: str) -> list[str] | None:
    """The steps of an LLM segmentation, or None when it is not a faithful `Step n:` split of
    `solution` (lost or changed content, text outside steps, a step holding a stop marker)."""
    try:
        steps = split_steps(output.strip())
    except StepFormatError:
        return None
    if any(not s or STOP_STRING in s for s in steps):
        return None
    if _content_key("".join(steps)) != _content_key(solution):
        return None
    steps = _merge_after_first_final(steps)
    return steps if is_final(steps[-1]) else None


def llm_segment(
    records: Sequence[RawSolution],
    model_dir: str | Path,
    model_params=None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
) -> tuple[list[IFTRecord], list[str]]:
    """The paper's segmentation (Figure 3 format) by a local HF model, greedy. Returns the IFT
    records and the ids that fell back to `rule_segment` because the model's output was not a
    faithful split (the paper's o1 was told not to alter content; we check that it did not)."""
    import torch


    model, tok = load_policy(model_dir, model_params or ModelParams())
    tok.padding_side = "left"
    out: list[IFTRecord] = []
    fallbacks: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = list(records[start:start + batch_size])
        prompts = [chat_prompt(tok, SEGMENT_PROMPT.format(question=r.question, solution=r.solution)) for r in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        budget = max_new_tokens or max(
            int(1.3 * len(tok(r.solution, add_special_tokens=False)["input_ids"])) + 64 for r in batch
        )
        with torch.no_grad():
            generated = model.generate(
                **enc, do_sample=False, max_new_tokens=budget,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for raw, text in zip(batch, texts):
            steps = accept_segmentation(text, raw.solution)
            if steps is None:
                fallbacks.append(raw.id)
                out.append(rule_segment(raw))
            else:
                out.append(IFTRecord(id=raw.id, question=raw.question, steps=steps))
    return out, fallbacks


def collect_solutions(
    source: Source, n: int, seed: int, exclude: set[str] = frozenset(), stats: dict | None = None,
) -> list[RawSolution]:
    """`n` usable solutions with distinct questions, in a seeded order; ValueError when short."""
    stats = stats if stats is not None else {}
    schema = solution_schema(source.columns())
    chosen: list[RawSolution] = []
    seen = set(exclude)
    if n <= 0:
        return chosen
    for where, row in source.rows(_permutation(len(source), seed, "ift")):
        raw = read_solution_row(row, where, schema)
        key = normalize_question(raw.question)
        if key in seen:
            stats["ift_skipped_duplicate_or_excluded"] = stats.get("ift_skipped_duplicate_or_excluded", 0) + 1
            continue
        why = usable_solution(raw)
        if why:
            stats[f"ift_skipped_{why}"] = stats.get(f"ift_skipped_{why}", 0) + 1
            continue
        seen.add(key)
        chosen.append(raw)
        if len(chosen) == n:
            return chosen
    raise ValueError(f"{source.spec.text}: asked for {n} IFT solutions, found only {len(chosen)} usable ({stats})")


def build_ift(source: Source, n: int, seed: int, exclude: set[str] = frozenset(),
              stats: dict | None = None) -> list[IFTRecord]:
    """`n` IFT records, rule-segmented."""
    return [rule_segment(raw) for raw in collect_solutions(source, n, seed, exclude, stats)]


# ============================================================================ PRM800K


@dataclass
class Completion:
    text: str
    rating: int | None
    flagged: bool


@dataclass
class PRMStep:
    completions: list[Completion]
    chosen: int | None
    human: str | None

    @property
    def taken(self) -> Completion | None:
        """The step the labeller continued with (a human completion counts as correct)."""
        if self.chosen is not None:
            return self.completions[self.chosen]
        if self.human is not None:
            return Completion(self.human, 1, False)
        return None


@dataclass
class PRMSolution:
    where: str
    problem: str
    steps: list[PRMStep]
    finish_reason: str
    pre_generated_steps: list[str] | None = None


def read_prm_row(row: dict, where: str) -> PRMSolution:
    """One PRM800K line (phase 1 or 2), checked field by field."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, dict):
        raise RecordError(f"{where}: field 'question' must be an object with 'problem'")
    problem = _require_str(question, "problem", where, "question.problem")
    pre = question.get("pre_generated_steps")
    if pre is not None and not (isinstance(pre, list) and all(isinstance(s, str) for s in pre)):
        raise RecordError(f"{where}: field 'question.pre_generated_steps' must be a list of strings")
    label = row.get("label")
    if not isinstance(label, dict):
        raise RecordError(f"{where}: field 'label' must be an object with 'steps'")
    raw_steps = label.get("steps")
    if not isinstance(raw_steps, list):
        raise RecordError(f"{where}: field 'label.steps' must be a list")
    finish = label.get("finish_reason")
    if not isinstance(finish, str):
        raise RecordError(f"{where}: field 'label.finish_reason' must be a string")
    steps = []
    for i, step in enumerate(raw_steps):
        name = f"label.steps[{i}]"
        if not isinstance(step, dict):
            raise RecordError(f"{where}: field {name!r} must be an object")
        comps = step.get("completions")
        if not isinstance(comps, list):
            raise RecordError(f"{where}: field '{name}.completions' must be a list")
        completions = []
        for j, c in enumerate(comps):
            cname = f"{name}.completions[{j}]"
            if not isinstance(c, dict):
                raise RecordError(f"{where}: field {cname!r} must be an object")
            if not isinstance(c.get("text"), str):
                raise RecordError(f"{where}: field '{cname}.text' must be a string")
            rating = c.get("rating")
            if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
                raise RecordError(f"{where}: field '{cname}.rating' must be -1, 0, 1 or null (got {rating!r})")
            flagged = c.get("flagged")
            if flagged is not None and not isinstance(flagged, bool):
                raise RecordError(f"{where}: field '{cname}.flagged' must be true, false or null")
            completions.append(Completion(c["text"], rating, bool(flagged)))
        chosen = step.get("chosen_completion")
        if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int)
                                   or not 0 <= chosen < len(completions)):
            raise RecordError(f"{where}: field '{name}.chosen_completion' must index completions or be null "
                              f"(got {chosen!r}, {len(completions)} completions)")
        human = step.get("human_completion")
        if isinstance(human, dict):
            human = human.get("text")
        if human is not None and not isinstance(human, str):
            raise RecordError(f"{where}: field '{name}.human_completion' must be null, a string or have 'text'")
        steps.append(PRMStep(completions, chosen, human or None))
    return PRMSolution(where, problem.strip(), steps, finish, pre)


_PRM_ANSWER = re.compile(r"\s*#\s*Answer\s*\n+(.+?)\s*$", re.DOTALL)


def prm_step_text(text: str) -> str | None:
    """A PRM800K step in our format: its `# Answer\\n\\nX` ending becomes
    `The answer is $\\boxed{X}$.` (our final-step rule); None when unusable (empty, or holding a
    `Step n:` marker that would break the numbering)."""
    text = text.strip()
    m = _PRM_ANSWER.search(text)
    if m:
        before = text[: m.start()].strip()
        answer = "The answer is $\\boxed{" + m.group(1).strip() + "}$."
        text = f"{before}\n{answer}" if before else answer
    if not text or STEP_MARKER.search(text) or STOP_STRING in text:
        return None
    return text


@dataclass
class StepPair:
    """A PRM800K step where one alternative was rated +1 and another -1."""
    question: str
    previous_steps: list[str]
    good: str
    bad: str
    step_index: int

    @property
    def key(self) -> str:
        return _hash(normalize_question(self.question), *self.previous_steps, "|", self.good, self.bad)


def step_pairs(solution: PRMSolution, rng: random.Random, pairs_per_step: int = 1) -> list[StepPair]:
    """Up to `pairs_per_step` (good, bad) pairs at every step that has both ratings. The earlier
    steps are the completions the labeller continued with; walking stops where there is none."""
    out: list[StepPair] = []
    previous: list[str] = []
    for i, step in enumerate(solution.steps):
        usable = [(prm_step_text(c.text), c) for c in step.completions if not c.flagged]
        goods = sorted({t for t, c in usable if t and c.rating == 1})
        bads = sorted({t for t, c in usable if t and c.rating == -1})
        combos = [(g, b) for g in goods for b in bads if g != b]
        rng.shuffle(combos)
        for good, bad in combos[:pairs_per_step]:
            out.append(StepPair(solution.problem, list(previous), good, bad, i))
        taken = step.taken
        text = prm_step_text(taken.text) if taken else None
        if text is None:
            break
        previous.append(text)
    return out


def templated_judgment(verdict: str) -> str:
    """The judgment text when no teacher model writes one (ends with the paper's verdict marker)."""
    good, bad = ("A", "B") if verdict == "A" else ("B", "A")
    return f"Assistant {good}'s step is correct; assistant {bad}'s step contains an error. [[{verdict}]]"


JudgmentFn = Callable[[str, list[str], str, str, str], str]
"""(question, previous_steps, step_a, step_b, verdict) -> judgment text ending in `[[verdict]]`."""


def _default_judgment(question: str, previous: list[str], a: str, b: str, verdict: str) -> str:
    return templated_judgment(verdict)


def _pair_records(pair: StepPair, judgment_fn: JudgmentFn) -> tuple[EFTRecord, EFTRecord] | None:
    """The pair in both orders, or None when the judgment disagrees with the labels in either."""
    base = f"eft-{pair.key}"
    records = []
    for suffix, a, b, verdict in (("ab", pair.good, pair.bad, "A"), ("ba", pair.bad, pair.good, "B")):
        judgment = judgment_fn(pair.question, list(pair.previous_steps), a, b, verdict)
        if parse_verdict(judgment) != verdict:
            return None
        records.append(EFTRecord(id=f"{base}-{suffix}", question=pair.question,
                                 previous_steps=list(pair.previous_steps), step_a=a, step_b=b,
                                 verdict=verdict, judgment=judgment, error=""))
    return records[0], records[1]


def read_prm_solutions(source: Source, exclude: set[str] = frozenset(),
                       stats: dict | None = None) -> list[PRMSolution]:
    """Every usable PRM800K solution (skipping `bad_problem` and excluded questions)."""
    stats = stats if stats is not None else {}
    out = []
    for where, row in source.rows():
        sol = read_prm_row(row, where)
        if sol.finish_reason == "bad_problem":
            stats["prm_skipped_bad_problem"] = stats.get("prm_skipped_bad_problem", 0) + 1
            continue
        if normalize_question(sol.problem) in exclude:
            stats["prm_skipped_excluded"] = stats.get("prm_skipped_excluded", 0) + 1
            continue
        out.append(sol)
    return out


def build_eft(
    solutions: Sequence[PRMSolution],
    n_train: int,
    n_test: int,
    seed: int,
    judgment_fn: JudgmentFn | None = None,
    pairs_per_step: int = 1,
    stats: dict | None = None,
) -> tuple[list[EFTRecord], list[EFTRecord], set[str]]:
    """(train records: n_train pairs in both orders, test records: n_test pairs once each with
    balanced verdict slots, the test questions). Test questions are drawn first, whole questions
    at a time, so no question is in both splits."""
    stats = stats if stats is not None else {}
    judgment_fn = judgment_fn or _default_judgment
    rng = _seeded(seed, "eft-pairs")
    by_question: dict[str, list[StepPair]] = {}
    seen: set[str] = set()
    for sol in solutions:
        for pair in step_pairs(sol, rng, pairs_per_step):
            if pair.key not in seen:
                seen.add(pair.key)
                by_question.setdefault(normalize_question(pair.question), []).append(pair)
    questions = sorted(by_question)
    _seeded(seed, "eft-questions").shuffle(questions)
    stats["eft_candidate_pairs"] = len(seen)
    dropped = 0

    test_pairs: list[tuple[EFTRecord, EFTRecord]] = []
    test_questions: set[str] = set()
    q_iter = iter(questions)
    while len(test_pairs) < n_test:
        q = next(q_iter, None)
        if q is None:
            raise ValueError(f"EFT: only {len(test_pairs)} test pairs available, need {n_test} "
                             f"({len(seen)} candidate pairs; try pairs_per_step > 1 or more data)")
        test_questions.add(q)
        for pair in by_question[q]:
            if len(test_pairs) == n_test:
                break
            recs = _pair_records(pair, judgment_fn)
            if recs is None:
                dropped += 1
            else:
                test_pairs.append(recs)

    train_candidates = [p for q in q_iter for p in by_question[q]]
    _seeded(seed, "eft-train").shuffle(train_candidates)
    train: list[EFTRecord] = []
    n_pairs = 0
    for pair in train_candidates:
        if n_pairs == n_train:
            break
        recs = _pair_records(pair, judgment_fn)
        if recs is None:
            dropped += 1
            continue
        train.extend(recs)
        n_pairs += 1
    if n_pairs < n_train:
        raise ValueError(f"EFT: only {n_pairs} training pairs available after the test split, need {n_train}")
    stats["eft_dropped_by_judgment"] = dropped

    slots = ["ab" if i % 2 == 0 else "ba" for i in range(len(test_pairs))]
    _seeded(seed, "eft-test-slots").shuffle(slots)
    test = [ab if slot == "ab" else ba for (ab, ba), slot in zip(test_pairs, slots)]
    return train, test, test_questions


SRLM_HIGH = "Every step of the response is correct and it reaches the right final answer. Score: 5"


def srlm_low_judgment(step_number: int) -> str:
    return f"Step {step_number} of the response contains an error, so its answer cannot be trusted. Score: 1"


def solution_record(sol: PRMSolution) -> SRLMEFTRecord | None:
    """A whole-solution scoring example, or None when the labels say neither good nor bad."""
    steps: list[str] = []
    for i, step in enumerate(sol.steps):
        taken = step.taken
        if taken is not None and taken.rating is not None and taken.rating >= 0:
            text = prm_step_text(taken.text)
            if text is None:
                return None
            steps.append(text)
            continue
        bad = taken if taken is not None and taken.rating == -1 else next(
            (c for c in step.completions if c.rating == -1 and not c.flagged), None)
        if bad is None:
            return None
        bad_text = prm_step_text(bad.text)
        if bad_text is None:
            return None
        response_steps = steps + [bad_text]
        # Phase 2 keeps the whole pre-generated solution: use it when its prefix is what was rated.
        pre = [prm_step_text(s) for s in (sol.pre_generated_steps or [])]
        if len(pre) > i and all(pre) and pre[: i + 1] == response_steps:
            response_steps = pre  # type: ignore[assignment]
        response = join_steps(response_steps)
        return SRLMEFTRecord(id=f"srlm-{_hash(sol.problem, response)}", question=sol.problem,
                             response=response, score=1, judgment=srlm_low_judgment(i + 1))
    if sol.finish_reason != "solution" or not steps or not is_final(steps[-1]):
        return None
    response = join_steps(steps)
    return SRLMEFTRecord(id=f"srlm-{_hash(sol.problem, response)}", question=sol.problem,
                         response=response, score=5, judgment=SRLM_HIGH)


def build_srlm_eft(solutions: Sequence[PRMSolution], n: int, seed: int,
                   exclude: set[str] = frozenset(), stats: dict | None = None) -> list[SRLMEFTRecord]:
    """`n` solution-scoring records, half `Score: 5` and half `Score: 1`, in a seeded order."""
    stats = stats if stats is not None else {}
    high: dict[str, SRLMEFTRecord] = {}
    low: dict[str, SRLMEFTRecord] = {}
    for sol in solutions:
        if normalize_question(sol.problem) in exclude:
            continue
        rec = solution_record(sol)
        if rec is not None:
            (high if rec.score == 5 else low).setdefault(rec.id, rec)
    stats["srlm_candidates"] = {"high": len(high), "low": len(low)}
    n_high, n_low = n // 2 + n % 2, n // 2
    if len(high) < n_high or len(low) < n_low:
        raise ValueError(f"SRLM EFT: need {n_high} high and {n_low} low solutions, "
                         f"found {len(high)} and {len(low)}")
    rng = _seeded(seed, "srlm")
    chosen = rng.sample(sorted(high.values(), key=lambda r: r.id), n_high)
    chosen += rng.sample(sorted(low.values(), key=lambda r: r.id), n_low)
    rng.shuffle(chosen)
    return chosen


# ============================================================================ question pools


def read_question_row(row: dict, where: str) -> tuple[str, str | None]:
    """(question, solution or None) from a row with `problem` or `question`."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    name = "problem" if "problem" in row and row.get("problem") is not None else "question"
    question = _require_str(row, name, where)
    solution = row.get("solution", row.get("answer"))
    return question.strip(), solution if isinstance(solution, str) else None


def build_pools(source: Source, sizes: Sequence[int], seed: int, exclude: set[str] = frozenset(),
                stats: dict | None = None) -> list[list[Question]]:
    """Disjoint pools of distinct questions (none in `exclude`), sizes as given, seeded. A question
    whose source solution has no final answer (`\\boxed{}` / `####`) is skipped: the search
    could never finish it."""
    stats = stats if stats is not None else {}
    need = sum(sizes)
    picked: list[Question] = []
    seen = set(exclude)
    if need == 0:
        return [[] for _ in sizes]
    for where, row in source.rows(_permutation(len(source), seed, "pools")):
        question, solution = read_question_row(row, where)
        key = normalize_question(question)
        if key in seen:
            continue
        if solution is not None and "\\boxed" not in solution and "####" not in solution:
            stats["pool_skipped_no_answer"] = stats.get("pool_skipped_no_answer", 0) + 1
            continue
        if STEP_MARKER.search(question):
            continue
        seen.add(key)
        picked.append(Question(id=f"q-{_hash(key)}", question=question))
        if len(picked) == need:
            break
    if len(picked) < need:
        raise ValueError(f"{source.spec.text}: pools need {need} distinct new questions, found {len(picked)}")
    pools, start = [], 0
    for size in sizes:
        pools.append(picked[start:start + size])
        start += size
    return pools


# ============================================================================ the task


@dataclass
class RealTask(SyntheticTask):
    """The synthetic task's splits (so every stage reads both alike), plus build statistics."""
    stats: dict = field(default_factory=dict)


def benchmark_questions(params) -> set[str]:
    """Normalised questions of the preset's evaluation benchmarks that are available locally."""
    data_dir = params.eval.benchmark_dir or os.environ.get("PSR_BENCHMARK_DIR", "")
    if not data_dir:
        return set()
    out: set[str] = set()
    for name in params.eval.benchmarks:
        if name in BENCHMARKS and (Path(data_dir) / name / "test.jsonl").is_file():
            out.update(normalize_question(item.question) for item in load_benchmark(name, data_dir))
    return out


def build_real_task(
    params,
    seed: int,
    judgment_fn: JudgmentFn | None = None,
    decontaminate: bool = True,
    cache_dir: str | None = None,
) -> RealTask:
    """Every split of the real-data task from the preset's sources, deterministic in `seed`."""
    t = params.task
    for name in ("ift_source", "eft_source", "question_source"):
        if not getattr(t, name):
            raise ValueError(f"task.{name} is empty: task.kind 'real' needs a source spec (see psr.tasks.real)")
    sources: dict[str, Source] = {}

    def source(spec: str) -> Source:
        if spec not in sources:
            sources[spec] = Source(spec, cache_dir)
        return sources[spec]

    stats: dict[str, Any] = {}
    banned = benchmark_questions(params) if decontaminate else set()
    stats["benchmark_questions_excluded"] = len(banned)

    # The judge's test questions are drawn first and kept out of everything else: an IFT
    # solution to a test question would tell the judge which candidate step is right.
    prm = read_prm_solutions(source(t.eft_source), banned, stats)
    eft, eft_test, test_questions = build_eft(prm, t.n_eft, t.n_eft_test, seed, judgment_fn, stats=stats)
    srlm: list[SRLMEFTRecord] = []
    if "srlm" in params.run.arms and t.n_srlm_eft > 0:
        srlm = build_srlm_eft(prm, t.n_srlm_eft, seed, test_questions, stats)
    held_out = banned | test_questions
    ift = build_ift(source(t.ift_source), t.n_ift, seed, held_out, stats)
    ift_questions = {normalize_question(r.question) for r in ift}
    pools = build_pools(source(t.question_source), t.questions_per_iteration, seed, held_out | ift_questions, stats)
    return RealTask(ift=ift, eft=eft, eft_test=eft_test, pools=pools, test=[], srlm_eft=srlm, stats=stats)
