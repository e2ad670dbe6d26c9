"""The records that flow between stages. Each serialises to one JSON line (`psr.io`).

Steps are stored as *contents* (no `Step n: ` prefix); `psr.steps` renders the numbering.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Question:
    """A question for the search. Deliberately has no answer field: the search never sees gold."""

    id: str
    question: str


@dataclass
class Problem:
    """A question with its gold answer and reference solution (IFT source, test sets)."""

    id: str
    question: str
    gold: str
    steps: list[str] = field(default_factory=list)
    n_ops: int = 0


@dataclass
class IFTRecord:
    """Instruction-following data: question -> full step-by-step solution."""

    id: str
    question: str
    steps: list[str]


@dataclass
class EFTRecord:
    """Evaluation-following data / a held-out step pair: which of two next steps is better.

    `judgment` is the full judge output (explanation, then `[[A]]`/`[[B]]`); `verdict` is the
    better slot. `error` names the kind of flaw in the bad step (synthetic data) or is empty."""

    id: str
    question: str
    previous_steps: list[str]
    step_a: str
    step_b: str
    verdict: str
    judgment: str
    error: str = ""


@dataclass
class SRLMEFTRecord:
    """Solution-scoring EFT for the SRLM baseline: a whole response and its 1-5 judgment."""

    id: str
    question: str
    response: str
    score: int
    judgment: str


@dataclass
class PPDPair:
    """One step-wise preference pair from the self-judged search (the stable interface).

    `is_final`: the chosen step ends the solution (gets EOS in DPO); `rejected_is_final` likewise
    for the rejected step. `scores`: win counts of all candidates at that step."""

    id: str
    question: str
    previous_steps: list[str]
    chosen: str
    rejected: str
    is_final: bool
    scores: list[int]
    iteration: int
    rejected_is_final: bool = False


@dataclass
class SolutionPair:
    """One whole-solution preference pair for the SRLM baseline (scores are mean 1-5 ratings)."""

    id: str
    question: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    iteration: int
