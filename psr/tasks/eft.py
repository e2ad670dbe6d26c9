"""Judge training data from PRM800K: step pairs for the PSRLM step judge (EFT) and whole
solutions scored 1 or 5 for the SRLM baseline.

- `eft` / `eft_test`: PRM800K steps at which labellers rated one alternative +1 and another -1
  give a pair (good, bad), with the question and the earlier steps (the completions chosen at
  the earlier steps). A training pair is written in both orders (A/B and B/A: position
  balance); a test pair once, verdict slots balanced, since the judging stage swaps the order
  itself. The test split is held out by question. Judgments are templated
  (`templated_judgment`) unless a `judgment_fn` (a teacher model) is given; a pair whose
  teacher judgment disagrees with the labels in either order is dropped, as the paper keeps
  only pairs on which o1 agrees with the PRM in both orders.
- `srlm_eft`: every step rated >= 0 and finished with the right answer -> `Score: 5`; a step
  rated -1 -> `Score: 1`; half and half.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from psr.prompts import parse_verdict
from psr.records import EFTRecord, SRLMEFTRecord
from psr.steps import is_final, join_steps
from psr.tasks.rows import PRMSolution, normalize_question, prm_step_text, read_prm_row, short_hash
from psr.tasks.sources import Source, seeded_rng

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
        return short_hash(normalize_question(self.question), *self.previous_steps, "|", self.good, self.bad)


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
    rng = seeded_rng(seed, "eft-pairs")
    by_question: dict[str, list[StepPair]] = {}
    seen: set[str] = set()
    for sol in solutions:
        for pair in step_pairs(sol, rng, pairs_per_step):
            if pair.key not in seen:
                seen.add(pair.key)
                by_question.setdefault(normalize_question(pair.question), []).append(pair)
    questions = sorted(by_question)
    seeded_rng(seed, "eft-questions").shuffle(questions)
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
    seeded_rng(seed, "eft-train").shuffle(train_candidates)
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
    seeded_rng(seed, "eft-test-slots").shuffle(slots)
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
        return SRLMEFTRecord(id=f"srlm-{short_hash(sol.problem, response)}", question=sol.problem,
                             response=response, score=1, judgment=srlm_low_judgment(i + 1))
    if sol.finish_reason != "solution" or not steps or not is_final(steps[-1]):
        return None
    response = join_steps(steps)
    return SRLMEFTRecord(id=f"srlm-{short_hash(sol.problem, response)}", question=sol.problem,
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
    rng = seeded_rng(seed, "srlm")
    chosen = rng.sample(sorted(high.values(), key=lambda r: r.id), n_high)
    chosen += rng.sample(sorted(low.values(), key=lambda r: r.id), n_low)
    rng.shuffle(chosen)
    return chosen
