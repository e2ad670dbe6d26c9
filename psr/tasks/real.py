"""The real-data task for the paper presets: IFT from NuminaMath-CoT (or GSM8K/MATH train
offline), step-pair EFT and solution-scoring EFT from PRM800K, and question pools for the search.

Sources are given as spec strings (`psr.tasks.sources`); rows are checked per schema
(`psr.tasks.rows`); IFT is built in `psr.tasks.ift`, EFT and SRLM EFT in `psr.tasks.eft`.

**What is built** (`build_real_task(params, seed) -> RealTask`):

- `ift`: solutions segmented into steps by the rule-based `psr.steps.segment_solution`, or with
  `task.segmenter: model` by the teacher model in the paper's Figure 3 format
  (`psr.tasks.segment`; rule segmentation wherever the model's split changes the text). Rows without a `\\boxed{}` answer and rows that already
  carry `Step n:` markers are skipped; GSM8K's calculator annotations `<<48/2=24>>` are removed
  (tool markup, not reasoning) and `#### N` becomes `The answer is \\boxed{N}.`.
- `eft` / `eft_test`: PRM800K step pairs (good, bad) in both orders / once (`psr.tasks.eft`),
  judged by the teacher model (kept when both orders agree with the labels) or, when the preset
  asks for it, by the fixed template. `n_eft` and `n_eft_test` count *pairs*, like the paper's
  4,167 / 500.
- `srlm_eft`: whole PRM800K solutions for the SRLM baseline, `Score: 5` or `Score: 1`, half
  and half.
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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from psr.policy import Policy
from psr.records import Question, SRLMEFTRecord
from psr.steps import STEP_MARKER
from psr.tasks.benchmarks import BENCHMARKS, load_benchmark
from psr.tasks.data import TaskData
from psr.tasks.eft import (
    JudgmentWriter,
    TeacherJudgments,
    TemplateJudgments,
    build_eft,
    build_srlm_eft,
    eft_provenance,
    read_prm_solutions,
)
from psr.tasks.ift import build_ift
from psr.tasks.rows import RawSolution
from psr.tasks.segment import llm_segment
from psr.tasks.rows import normalize_question, read_question_row, short_hash
from psr.tasks.sources import Source, seeded_order


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
    for where, row in source.rows(seeded_order(len(source), seed, "pools")):
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
        picked.append(Question(id=f"q-{short_hash(key)}", question=question))
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
class RealTask(TaskData):
    """The splits every task has (so every stage reads both tasks alike), plus build statistics
    and `provenance`: who wrote the EFT judgments and segmented the IFT solutions, and what the
    teacher's output filters kept (`eft`, `ift`; the data manifest and the report show it)."""
    stats: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


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


def judgment_writer(params, teacher: Policy | None, seed: int) -> JudgmentWriter:
    """The EFT judgment writer `task.eft_judgments` asks for."""
    t = params.task
    if t.eft_judgments == "template":
        return TemplateJudgments()
    if teacher is None:
        raise ValueError("task.eft_judgments is 'teacher' but no teacher model was given (psr.teacher.load_teacher)")
    return TeacherJudgments(teacher, t.teacher.name_or_path, t.teacher.max_new_tokens, seed=seed)


def ift_segmenter(params, teacher: Policy | None, seed: int, provenance: dict):
    """The IFT segmentation `task.segmenter` asks for (None: by rule); records its fallbacks in
    `provenance["ift"]`."""
    t = params.task
    provenance["ift"] = {"segmenter": t.segmenter, "teacher": None}
    if t.segmenter == "rule":
        return None
    if teacher is None:
        raise ValueError("task.segmenter is 'model' but no teacher model was given (psr.teacher.load_teacher)")

    def segment(raws: list[RawSolution]):
        records, fallbacks = llm_segment(raws, teacher, batch_size=t.teacher.batch_pairs, seed=seed)
        provenance["ift"].update(teacher=t.teacher.name_or_path, solutions=len(raws),
                                 segmented_by_model=len(raws) - len(fallbacks), rule_fallbacks=len(fallbacks),
                                 fallback_ids=fallbacks[:20])
        return records

    return segment


def build_real_task(
    params,
    seed: int,
    teacher: Policy | None = None,
    decontaminate: bool = True,
    cache_dir: str | None = None,
) -> RealTask:
    """Every split of the real-data task from the preset's sources, deterministic in `seed` (and
    in the teacher, which decodes greedily). `teacher` is needed when `task.eft_judgments` is
    `teacher` or `task.segmenter` is `model`."""
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
    provenance: dict[str, Any] = {}
    writer = judgment_writer(params, teacher, seed)
    segment = ift_segmenter(params, teacher, seed, provenance)
    banned = benchmark_questions(params) if decontaminate else set()
    stats["benchmark_questions_excluded"] = len(banned)

    # The judge's test questions are drawn first and kept out of everything else: an IFT
    # solution to a test question would tell the judge which candidate step is right.
    prm = read_prm_solutions(source(t.eft_source), banned, stats)
    eft, eft_test, test_questions = build_eft(prm, t.n_eft, t.n_eft_test, seed, writer, stats=stats,
                                              batch_pairs=t.teacher.batch_pairs)
    provenance["eft"] = eft_provenance(writer, stats, eft + eft_test)
    srlm: list[SRLMEFTRecord] = []
    if "srlm" in params.run.arms and t.n_srlm_eft > 0:
        srlm = build_srlm_eft(prm, t.n_srlm_eft, seed, test_questions, stats)
    held_out = banned | test_questions
    ift = build_ift(source(t.ift_source), t.n_ift, seed, held_out, stats, segment)
    ift_questions = {normalize_question(r.question) for r in ift}
    pools = build_pools(source(t.question_source), t.questions_per_iteration, seed, held_out | ift_questions, stats)
    return RealTask(ift=ift, eft=eft, eft_test=eft_test, pools=pools, test=[], srlm_eft=srlm, stats=stats,
                    provenance=provenance)
