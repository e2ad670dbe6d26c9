"""The study's arms as data: what each one makes its preference data with, which model it starts
from and which stages it runs. The graph, keys, layout, stages and report ask here rather than
naming arms.

- `psrlm`: the paper's loop: self-judged step search, step-DPO.
- `srlm`: the baseline: self-scored whole solutions, solution DPO; its own warm-up.
- `verified`: the positive control: psrlm's step search and step-DPO on the same pools, from
  *psrlm's M1* (no warm-up of its own), with the task's answer key as scorer instead of the
  self-judge. It is not judged on held-out step pairs (03_judging): its loop never judges, so
  the judge numbers of its models would only measure a side effect of its DPO, at the cost of
  three more judging stages in the study's time budget.
"""

from __future__ import annotations

STEP_ARMS = ("psrlm", "verified")  # step search -> PPD pairs -> step-DPO
STARTS_FROM = {"verified": "psrlm"}  # arm -> the arm whose M1 it starts from
NOT_JUDGED = ("verified",)
MODEL_STAGES = ("01_warmup_sft", "03_judging", "05_evaluate")  # a function of M_k alone


def searches_steps(arm: str) -> bool:
    """The arm makes step pairs by step search (PPD) and trains with step-DPO."""
    return arm in STEP_ARMS


def uses_answer_key(arm: str) -> bool:
    """The arm's search is scored by the task's answer key (the verified control)."""
    return arm == "verified"


def model_arm(arm: str, k: int) -> str:
    """The arm whose folder holds `arm`'s M_k: psrlm's for the verified arm's M1."""
    return STARTS_FROM.get(arm, arm) if k == 1 else arm


def shares_model(arm: str, k: int) -> bool:
    """`arm`'s M_k is another arm's model (its warm-up, judging and evaluation are that arm's)."""
    return model_arm(arm, k) != arm


def runs_stage(arm: str, stage: str, k: int) -> bool:
    """Whether `arm`'s chain runs `stage` on M_k: not the stages of a model another arm owns, and
    no judging for an arm whose loop never judges."""
    if stage in MODEL_STAGES and shares_model(arm, k):
        return False
    return not (stage == "03_judging" and arm in NOT_JUDGED)
