"""Pair diagnostics: how right an iteration's preference pairs were, and how often its scorer
ranked a right candidate above a wrong one among its *own* candidates, checked with the task's
answer key (`psr.answer_key`) after the search. The report computes them from the files a
preference stage keeps; no loop reads them.

- Pair kinds (chosen, rejected): `right_over_wrong`, `both_right`, `both_wrong`, `inverted`
  (wrong over right), each a percent of the `n` pairs the arm trains on.
- `own_verdicts` (self-judged search only): every ordered judgment of two distinct candidates of
  which exactly one is right; `accuracy` is the percent whose verdict names the right one (an
  unparsed verdict is not right). This is the judge's accuracy on the pairs it actually judged,
  where the held-out EFT test measures it on pairs it never made.
- `own_scores` (every arm): every unordered pair of one expansion's candidates (SRLM: of one
  question's solutions) of which exactly one is right; `accuracy` is the percent where the right
  one scored strictly higher (wins, 1/0 key scores, mean 1-5 ratings), `tied` where the two tied.
- `expansions` (step arms): of the expansions that were scored (two or more distinct
  candidates), the percent with at least one right candidate (`any_right`) and with every
  candidate right (`all_right`): between the two lies what a perfect scorer could have paired.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

from psr.answer_key import AnswerKey
from psr.records import PPDPair, SolutionPair
from psr.search import ExpansionTrace
from psr.srlm import ScoredSolutions

PAIR_KINDS = ("right_over_wrong", "both_right", "both_wrong", "inverted")


def _percent(num: int, den: int) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def pair_kind(chosen_right: bool, rejected_right: bool) -> str:
    if chosen_right:
        return "both_right" if rejected_right else "right_over_wrong"
    return "inverted" if rejected_right else "both_wrong"


def pair_shares(kinds: Sequence[str]) -> dict:
    """`n` and the percent of each pair kind (None for every kind when there are no pairs)."""
    return {"n": len(kinds), **{k: _percent(sum(x == k for x in kinds), len(kinds)) for k in PAIR_KINDS}}


def step_pair_kinds(pairs: Iterable[PPDPair], key: AnswerKey) -> list[str]:
    """Each step pair's kind; a step counts as final as the search recorded it."""
    return [pair_kind(key.step_right(p.question, p.previous_steps, p.chosen, p.is_final),
                      key.step_right(p.question, p.previous_steps, p.rejected, p.rejected_is_final))
            for p in pairs]


def solution_pair_kinds(pairs: Iterable[SolutionPair], key: AnswerKey) -> list[str]:
    """Each whole-solution pair's kind, by final answer."""
    return [pair_kind(key.solution_right(p.question, p.chosen), key.solution_right(p.question, p.rejected))
            for p in pairs]


def candidate_labels(trace: ExpansionTrace, question: str, key: AnswerKey) -> list[bool]:
    """Right or wrong for each distinct candidate of one expansion."""
    finals = trace.finals or [False] * len(trace.candidates)
    return [key.step_right(question, trace.previous_steps, c, f) for c, f in zip(trace.candidates, finals)]


def own_verdicts(judged: Iterable[tuple[ExpansionTrace, list[bool]]]) -> dict:
    """The self-judge's accuracy on its own ordered comparisons with exactly one right candidate."""
    n = right = 0
    for trace, labels in judged:
        for a, b, verdict in trace.judgments:
            if labels[a] == labels[b]:
                continue
            n += 1
            right += verdict is not None and labels[a if verdict == "A" else b]
    return {"n": n, "accuracy": _percent(right, n)}


def own_scores(groups: Iterable[tuple[Sequence[float | None], Sequence[bool]]]) -> dict:
    """How often the right candidate of a (right, wrong) pair scored higher: `groups` are
    (scores, labels) per expansion or question; a candidate without a score is left out."""
    n = right = tied = 0
    for scores, labels in groups:
        for i, j in combinations(range(len(labels)), 2):
            if labels[i] == labels[j] or scores[i] is None or scores[j] is None:
                continue
            good, bad = (i, j) if labels[i] else (j, i)
            n += 1
            right += scores[good] > scores[bad]
            tied += scores[good] == scores[bad]
    return {"n": n, "accuracy": _percent(right, n), "tied": _percent(tied, n)}


def step_diagnostics(pairs: Sequence[PPDPair], traces: Sequence[ExpansionTrace], questions: dict[str, str],
                     key: AnswerKey) -> dict:
    """A step arm's iteration: its pairs' kinds, its scorer on its own candidates (`questions`:
    question id -> text, for the traces) and the room its expansions left."""
    scored = [t for t in traces if len(t.candidates) >= 2]
    labelled = [(t, candidate_labels(t, questions[t.question_id], key)) for t in scored]
    return {
        **pair_shares(step_pair_kinds(pairs, key)),
        "own_verdicts": own_verdicts(labelled),
        "own_scores": own_scores((t.wins, labels) for t, labels in labelled),
        "expansions": {"n": len(labelled), "any_right": _percent(sum(any(ls) for _, ls in labelled), len(labelled)),
                       "all_right": _percent(sum(all(ls) for _, ls in labelled), len(labelled))},
    }


def solution_diagnostics(pairs: Sequence[SolutionPair], scored: Sequence[ScoredSolutions], questions: dict[str, str],
                         key: AnswerKey) -> dict:
    """The SRLM arm's iteration: its best-vs-worst pairs' kinds, and its mean scores on its own
    solutions (right by final answer)."""
    return {
        **pair_shares(solution_pair_kinds(pairs, key)),
        "own_scores": own_scores((r.scores, [key.solution_right(questions[r.id], s) for s in r.solutions])
                                 for r in scored),
    }
