"""The splits of a task (whichever builds them) and their files.

Both tasks, `psr.tasks.synthetic` and `psr.tasks.real`, produce a `TaskData`; the study writes it
to its data folder once (`write_task`), every stage reads the files it needs, and the tokenizer of
a from-scratch model is trained on `corpus`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from psr.io import read_jsonl, write_jsonl
from psr.prompts import Templates
from psr.records import EFTRecord, IFTRecord, Problem, Question, SRLMEFTRecord
from psr.steps import join_steps


@dataclass
class TaskData:
    """The splits every task provides, synthetic or real: IFT and EFT for the warm-up, held-out
    step pairs for judging, one question pool per search iteration, test problems (empty for
    the real task, whose tests are the benchmarks) and solution-scoring EFT for SRLM."""

    ift: list[IFTRecord] = field(default_factory=list)
    eft: list[EFTRecord] = field(default_factory=list)
    eft_test: list[EFTRecord] = field(default_factory=list)
    pools: list[list[Question]] = field(default_factory=list)
    test: list[Problem] = field(default_factory=list)
    srlm_eft: list[SRLMEFTRecord] = field(default_factory=list)
    # the questions `corpus` gives the tokenizer in place of the pools' (empty: the pools'); not
    # written to the data folder. The synthetic task sets it when its pools lie outside the IFT
    # range, so that the tokenizer, like the warm-up data, does not depend on the pool range.
    tokenizer_questions: list[Question] = field(default_factory=list)


_POOL_FILE = re.compile(r"^pool_(\d+)\.jsonl$")


def write_task(task: TaskData, out_dir: str | Path) -> None:
    """Write every split as JSON lines (atomic per file); stale pool files from a larger earlier
    write are removed so that `load_task` reads back exactly this task."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "ift.jsonl", task.ift)
    write_jsonl(out / "eft.jsonl", task.eft)
    write_jsonl(out / "eft_test.jsonl", task.eft_test)
    for i, pool in enumerate(task.pools, start=1):
        write_jsonl(out / f"pool_{i}.jsonl", pool)
    for path in out.iterdir():
        m = _POOL_FILE.match(path.name)
        if m and int(m.group(1)) > len(task.pools):
            path.unlink()
    write_jsonl(out / "test.jsonl", task.test)
    write_jsonl(out / "srlm_eft.jsonl", task.srlm_eft)


def load_task(out_dir: str | Path) -> TaskData:
    out = Path(out_dir)
    numbers = sorted(int(m.group(1)) for p in out.glob("pool_*.jsonl") if (m := _POOL_FILE.match(p.name)))
    if numbers != list(range(1, len(numbers) + 1)):
        raise FileNotFoundError(f"{out}: pool files must be pool_1..pool_N, found numbers {numbers}")
    return TaskData(
        ift=read_jsonl(out / "ift.jsonl", IFTRecord),
        eft=read_jsonl(out / "eft.jsonl", EFTRecord),
        eft_test=read_jsonl(out / "eft_test.jsonl", EFTRecord),
        pools=[read_jsonl(out / f"pool_{i}.jsonl", Question) for i in numbers],
        test=read_jsonl(out / "test.jsonl", Problem),
        srlm_eft=read_jsonl(out / "srlm_eft.jsonl", SRLMEFTRecord),
    )


def corpus(task: TaskData, templates: Templates | Iterable[Templates]) -> Iterator[str]:
    """Text for training the BPE tokenizer: prompts and targets of every training record in the
    given template style(s), plus the pool and test *questions* (no test solutions or held-out
    judgments; they would not change the merges much, but the tokenizer need not see them)."""
    styles = [templates] if isinstance(templates, Templates) else list(templates)
    for t in styles:
        for r in task.ift:
            yield t.reasoning_prompt(r.question) + "\n" + join_steps(r.steps)
        for r in task.eft:
            yield t.judge_prompt(r.question, r.previous_steps, r.step_a, r.step_b) + "\n" + r.judgment
        for r in task.srlm_eft:
            yield t.srlm_prompt(r.question, r.response) + "\n" + r.judgment
        for q in task.tokenizer_questions or [q for pool in task.pools for q in pool]:
            yield t.reasoning_prompt(q.question)
        for p in task.test:
            yield t.reasoning_prompt(p.question)
