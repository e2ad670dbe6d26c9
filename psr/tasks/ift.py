"""IFT records from worked solutions (NuminaMath-CoT, MATH or GSM8K train): `n` usable solutions
with distinct questions in a seeded order, segmented into steps by rule
(`psr.steps.segment_solution`) or by a given segmenter (the teacher model of `psr.tasks.segment`). Rows without a `\\boxed{}` answer and rows that already carry
`Step n:` markers are skipped (the markers would clash with our numbering).
"""

from __future__ import annotations

from typing import Callable

from psr.records import IFTRecord
from psr.steps import STEP_MARKER, is_final, segment_solution
from psr.tasks.rows import RawSolution, normalize_question, read_solution_row, solution_schema
from psr.tasks.sources import Source, seeded_order

# Our choice: one sentence (or display block) per step, as the paper's o1 steps are fine-grained.
SENTENCES_PER_STEP = 1


def merge_after_first_final(steps: list[str]) -> list[str]:
    """Everything from the first `\\boxed{}` step on becomes one final step (search stops there)."""
    finals = [i for i, s in enumerate(steps) if is_final(s)]
    if finals and finals[0] < len(steps) - 1:
        return steps[: finals[0]] + [" ".join(steps[finals[0]:])]
    return steps


def usable_solution(raw: RawSolution) -> str | None:
    """Why a solution cannot become IFT data (None when it can)."""
    if "\\boxed" not in raw.solution:
        return "no_boxed"
    if STEP_MARKER.search(raw.solution) or STEP_MARKER.search(raw.question):
        return "has_step_markers"  # would clash with our own `Step n:` numbering
    return None


def rule_segment(raw: RawSolution, max_sentences_per_step: int = SENTENCES_PER_STEP) -> IFTRecord:
    """Rule-based segmentation (`psr.steps.segment_solution`), content preserved."""
    steps = merge_after_first_final(segment_solution(raw.solution, max_sentences_per_step))
    return IFTRecord(id=raw.id, question=raw.question, steps=steps)


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
    for where, row in source.rows(seeded_order(len(source), seed, "ift")):
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
              stats: dict | None = None,
              segment: Callable[[list[RawSolution]], list[IFTRecord]] | None = None) -> list[IFTRecord]:
    """`n` IFT records, segmented by `segment` (default: by rule, `rule_segment`)."""
    raws = collect_solutions(source, n, seed, exclude, stats)
    return segment(raws) if segment is not None else [rule_segment(raw) for raw in raws]
