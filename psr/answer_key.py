"""The task's answer key: which candidate steps and solutions are right. It is used in two places
only, both outside the self-rewarding loops: the verified control arm's scorer (`AnswerKeyScorer`,
which the study hands to `psr.search.step_search` for that arm alone) and the pair diagnostics
computed after the fact (`psr.diagnostics`). Nothing in `psr.search`, `psr.srlm`, `psr.judge` or
`psr.train` imports this module.

A per-step key exists for the synthetic task only: a step is right when it makes the claim the
reference next step makes given the earlier steps *as written* (`psr.tasks.synthetic.claim`,
`reference_next`: local correctness) and ends the solution exactly when the reference does. The
second condition matters for a candidate that stops with EOS after a correct intermediate
equation: it would end the solution without an answer, so it is a wrong step. The real-data
task has gold final answers at best, which cannot decide a non-final step, so it has no key here
(`task_answer_key` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from psr.judge import GroupJudgment
from psr.search import Candidates
from psr.steps import is_final
from psr.tasks.synthetic import boxed_value, claim, parse_question, reference_next


class AnswerKey(Protocol):
    """Right or wrong, for a candidate next step and for a whole solution (by its final answer)."""

    def step_right(self, question: str, previous_steps: Sequence[str], step: str, final: bool) -> bool: ...

    def solution_right(self, question: str, solution: str) -> bool: ...


class SyntheticKey:
    """The synthetic task's key, computed from a question's text (`parse_question`); a question
    this task did not write raises ValueError."""

    def step_right(self, question: str, previous_steps: Sequence[str], step: str, final: bool) -> bool:
        """`final`: the step ends the solution (boxed, or generation stopped with EOS). After
        earlier steps that admit no next step (more steps than operations, or a last step with
        no result) every candidate is wrong."""
        parse_question(question)  # a foreign question is an error, not a wrong step
        try:
            expected = reference_next(question, list(previous_steps))
        except ValueError:
            return False
        return claim(step) == claim(expected) and final == is_final(expected)

    def solution_right(self, question: str, solution: str) -> bool:
        """The last `\\boxed{}` holds the gold answer (the task's own `check_solution` rule)."""
        value = boxed_value(solution)
        return value is not None and value == parse_question(question).values()[-1]


def task_answer_key(task_kind: str) -> AnswerKey | None:
    """The key of a task kind (`task.kind`), or None when the task has none."""
    return SyntheticKey() if task_kind == "synthetic" else None


@dataclass(frozen=True)
class AnswerKeyScorer:
    """A `psr.search.Scorer` that scores a candidate 1 when the key says it is right and 0 when
    wrong, making no judge calls: chosen = a right step, rejected = a wrong one (as Step-DPO
    builds its data), and all right or all wrong is the search's tie (rollback) rule."""

    key: AnswerKey

    def score(self, groups: list[Candidates], *, seed: int) -> list[GroupJudgment]:
        return [
            GroupJudgment(wins=[int(self.key.step_right(g.question.question, g.previous_steps, text, final))
                                for text, final in zip(g.texts, g.finals)])
            for g in groups
        ]
