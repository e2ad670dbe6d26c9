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

M0, the model before warm-up, is the same for every arm of a seed: it is judged and evaluated
once, in the chain of `base_arm`, and the report shows it for every arm. The test-time search
(06) runs on the models of the arms that `scales_at_test_time`.
"""

from __future__ import annotations

from collections.abc import Sequence

STEP_ARMS = ("psrlm", "verified")  # step search -> PPD pairs -> step-DPO
STARTS_FROM = {"verified": "psrlm"}  # arm -> the arm whose M1 it starts from
NOT_JUDGED = ("verified",)
MODEL_STAGES = ("01_warmup_sft", "03_judging", "05_evaluate", "06_test_time_scaling")  # a function of M_k alone
# The paper's test-time scaling (Table 5) is PSRLM's: its models were taught to judge steps and
# judged their own in training. SRLM's models were taught to score whole solutions, and the
# verified arm's scorer was the answer key, which a test problem does not have.
TEST_TIME_ARMS = ("psrlm",)


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


def base_arm(arms: Sequence[str]) -> str:
    """The arm whose chain judges and evaluates M0 (and whose folder holds the tiny preset's M0):
    the first of `arms` that makes its own M1."""
    return next(a for a in arms if a not in STARTS_FROM)


def scales_at_test_time(arm: str) -> bool:
    """The arm's models solve test problems with their own step search in 06 (`TEST_TIME_ARMS`)."""
    return arm in TEST_TIME_ARMS
