"""Judge training data from PRM800K: step pairs for the PSRLM step judge (EFT) and whole
solutions scored 1 or 5 for the SRLM baseline.

- `eft` / `eft_test`: PRM800K steps at which labellers rated one alternative +1 and another -1
  give a pair (good, bad), with the question and the earlier steps (the completions chosen at
  the earlier steps). A training pair is written in both orders (A/B and B/A: position
  balance); a test pair once, verdict slots balanced, since the judging stage swaps the order
  itself. The test split is held out by question.
- Who writes the judgment (`JudgmentWriter`): a teacher model (`TeacherJudgments`) analyses each
  pair in both orders without seeing the labels, and a pair is kept only when both of its
  verdicts agree with the labels — the paper's filter (o1 agreeing with the PRM, consistently
  under an order swap). The fixed sentence of `TemplateJudgments` is the fallback a preset asks
  for explicitly; it states the labels' verdict and no analysis.
- `srlm_eft`: every step rated >= 0 and finished with the right answer -> `Score: 5`; a step
  rated -1 -> `Score: 1`; half and half.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, Sequence

from psr.config import JudgeParams
from psr.judge import run_judge_prompts
from psr.policy import Policy
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
    """The fallback judgment: the labels' verdict in one fixed sentence, no analysis."""
    good, bad = ("A", "B") if verdict == "A" else ("B", "A")
    return f"Assistant {good}'s step is correct; assistant {bad}'s step contains an error. [[{verdict}]]"


@dataclass(frozen=True)
class ShownPair:
    """A step pair as a judge is shown it: `step_a` in slot A, `step_b` in slot B, and the slot
    the labels say is better (a teacher is never told it)."""

    question: str
    previous_steps: tuple[str, ...]
    step_a: str
    step_b: str
    verdict: str


class JudgmentWriter(Protocol):
    """Writes one judgment (ending in `[[A]]`/`[[B]]` when it reaches a verdict) per shown pair."""

    def write(self, shown: list[ShownPair]) -> list[str]: ...

    def describe(self) -> dict: ...


class TemplateJudgments:
    """The explicit fallback (`task.eft_judgments: template`): `templated_judgment` per pair."""

    def write(self, shown: list[ShownPair]) -> list[str]:
        return [templated_judgment(s.verdict) for s in shown]

    def describe(self) -> dict:
        return {"judgments": "template", "teacher": None}


_VERDICT_END = re.compile(r"\[\[[AB]\]\]")


def ending_at_verdict(text: str) -> str:
    """The judgment up to and including its last verdict marker (what follows it is not part of
    a judgment the student should learn to write); the stripped text when there is none."""
    ends = [m.end() for m in _VERDICT_END.finditer(text)]
    return (text[: ends[-1]] if ends else text).strip()


class TeacherJudgments:
    """A teacher model judges every shown pair blind (the labels never reach its prompt), with the
    judge template the student learns from, greedily, all pairs of a batch in one generator call;
    its analysis and verdict become the EFT target."""

    def __init__(self, teacher: Policy, name: str, max_new_tokens: int, seed: int = 0):
        self.teacher = teacher
        self.name = name
        self.decoding = JudgeParams(do_sample=False, max_new_tokens=max_new_tokens)
        self.seed = seed

    def write(self, shown: list[ShownPair]) -> list[str]:
        judge = self.teacher.templates.judge_prompt
        prompts = [self.teacher.chat(judge(s.question, list(s.previous_steps), s.step_a, s.step_b)) for s in shown]
        samples = run_judge_prompts(prompts, self.teacher.generator, self.decoding, seed=self.seed)
        return [ending_at_verdict(x.text) for x in samples]

    def describe(self) -> dict:
        return {"judgments": "teacher", "teacher": self.name,
                "teacher_max_new_tokens": self.decoding.max_new_tokens}


def _both_orders(pair: StepPair) -> tuple[ShownPair, ShownPair]:
    prev = tuple(pair.previous_steps)
    return (ShownPair(pair.question, prev, pair.good, pair.bad, "A"),
            ShownPair(pair.question, prev, pair.bad, pair.good, "B"))


@dataclass
class FilterTally:
    """What the consistency filter decided: pairs judged, kept, and why the others were dropped."""

    judged: int = 0
    kept: int = 0
    wrong_ab: int = 0  # only the order good-in-A disagreed with the labels
    wrong_ba: int = 0  # only the order good-in-B disagreed
    wrong_both: int = 0
    no_verdict: int = 0  # judgments without a parseable verdict (either order)

    def to_stats(self) -> dict:
        return {"eft_judged_pairs": self.judged, "eft_kept_pairs": self.kept,
                "eft_dropped": {"wrong_ab_only": self.wrong_ab, "wrong_ba_only": self.wrong_ba,
                                "wrong_both": self.wrong_both, "judgments_without_verdict": self.no_verdict}}


def _pair_records(pair: StepPair, texts: tuple[str, str], tally: FilterTally) -> tuple[EFTRecord, EFTRecord] | None:
    """The pair in both orders, or None when a judgment disagrees with the labels in either."""
    base = f"eft-{pair.key}"
    shown = _both_orders(pair)
    got = [parse_verdict(t) for t in texts]
    ok = [g == s.verdict for g, s in zip(got, shown)]
    tally.judged += 1
    tally.no_verdict += sum(g is None for g in got)
    if not all(ok):
        if not any(ok):
            tally.wrong_both += 1
        elif ok[0]:
            tally.wrong_ba += 1
        else:
            tally.wrong_ab += 1
        return None
    tally.kept += 1
    return tuple(  # type: ignore[return-value]
        EFTRecord(id=f"{base}-{suffix}", question=pair.question, previous_steps=list(pair.previous_steps),
                  step_a=s.step_a, step_b=s.step_b, verdict=s.verdict, judgment=text, error="")
        for suffix, s, text in zip(("ab", "ba"), shown, texts)
    )


def _judged(pairs: Iterable[StepPair], writer: JudgmentWriter, batch_pairs: int,
            tally: FilterTally) -> Iterator[tuple[StepPair, tuple[EFTRecord, EFTRecord] | None]]:
    """Each pair with its records (None when filtered out), in order. Pairs are judged
    `batch_pairs` at a time, a batch only when the consumer reaches it."""
    stream = iter(pairs)
    while batch := list(itertools.islice(stream, batch_pairs)):
        texts = writer.write([s for p in batch for s in _both_orders(p)])
        if len(texts) != 2 * len(batch):
            raise RuntimeError(f"judgment writer returned {len(texts)} texts for {2 * len(batch)} shown pairs")
        for i, pair in enumerate(batch):
            yield pair, _pair_records(pair, (texts[2 * i], texts[2 * i + 1]), tally)


def build_eft(
    solutions: Sequence[PRMSolution],
    n_train: int,
    n_test: int,
    seed: int,
    writer: JudgmentWriter | None = None,
    pairs_per_step: int = 1,
    stats: dict | None = None,
    batch_pairs: int = 64,
    allow_short: bool = False,
) -> tuple[list[EFTRecord], list[EFTRecord], set[str]]:
    """(train records: n_train pairs in both orders, test records: n_test pairs once each with
    balanced verdict slots, the test questions). Test questions are drawn first, whole questions
    at a time, so no question is in both splits. `writer` (default: the template) writes the
    judgments; pairs it gets wrong in either order are dropped and the next candidates taken.
    Too few pairs is a ValueError, unless `allow_short` (then the splits hold what there is)."""
    stats = stats if stats is not None else {}
    writer = writer or TemplateJudgments()
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
    tally = FilterTally()

    # test: whole questions in order until n_test pairs are kept
    test_pairs: list[tuple[EFTRecord, EFTRecord]] = []
    test_questions: set[str] = set()
    in_order = (pair for q in questions for pair in by_question[q])
    if n_test > 0:
        for pair, recs in _judged(in_order, writer, batch_pairs, tally):
            test_questions.add(normalize_question(pair.question))
            if recs is not None:
                test_pairs.append(recs)
                if len(test_pairs) == n_test:
                    break
    if len(test_pairs) < n_test and not allow_short:
        raise ValueError(f"EFT: only {len(test_pairs)} test pairs available, need {n_test} "
                         f"({len(seen)} candidate pairs, {tally.judged - tally.kept} dropped by the judgment "
                         "filter; try pairs_per_step > 1 or more data)")

    # train: the remaining questions' pairs, shuffled
    train_candidates = [p for q in questions[len(test_questions):] for p in by_question[q]]
    seeded_rng(seed, "eft-train").shuffle(train_candidates)
    train: list[EFTRecord] = []
    n_pairs = 0
    if n_train > 0:
        for _, recs in _judged(train_candidates, writer, batch_pairs, tally):
            if recs is not None:
                train.extend(recs)
                n_pairs += 1
                if n_pairs == n_train:
                    break
    if n_pairs < n_train and not allow_short:
        raise ValueError(f"EFT: only {n_pairs} training pairs available after the test split, need {n_train} "
                         f"({tally.judged - tally.kept} dropped by the judgment filter)")
    stats["eft_dropped_by_judgment"] = tally.judged - tally.kept
    stats.update(tally.to_stats())

    slots = ["ab" if i % 2 == 0 else "ba" for i in range(len(test_pairs))]
    seeded_rng(seed, "eft-test-slots").shuffle(slots)
    test = [ab if slot == "ab" else ba for (ab, ba), slot in zip(test_pairs, slots)]
    return train, test, test_questions


def eft_provenance(writer: JudgmentWriter, stats: dict, records: Sequence[EFTRecord]) -> dict:
    """Who wrote the EFT judgments and what the filter kept, for a data manifest: the teacher (None
    for the template), pairs judged and kept, the kept rate (%), and the share (%) of records whose
    judgment is the fixed template sentence."""
    judged, kept = stats.get("eft_judged_pairs", 0), stats.get("eft_kept_pairs", 0)
    templated = sum(r.judgment == templated_judgment(r.verdict) for r in records)
    return {
        **writer.describe(),
        "pairs_judged": judged,
        "pairs_kept": kept,
        "kept_rate": round(100.0 * kept / judged, 2) if judged else None,
        "template_share": round(100.0 * templated / len(records), 2) if records else None,
        "dropped": stats.get("eft_dropped", {}),
    }


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
