"""Where a run's files live: results/<run>/[seed<s>/]<arm>/M<k>/<stage>/ (see README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psr.config import Params
from psr.study.arms import model_arm

SUMMARY = "summary.json"  # what every stage returns, in its folder (`psr.study.report` reads these)
# The preference stage (step search for the step arms, solution scoring for SRLM) kept the id it
# had before the SRLM arm existed: folders, notebooks and resume markers are named by it.
PREFERENCE_STAGE = "02_step_search"
# Beside a preference stage's pairs, what its scorer saw (inputs of the pair diagnostics, which
# the report computes after the fact into DIAGNOSTICS; nothing in any loop reads these files).
EXPANSIONS = "expansions.jsonl"  # step arms: every expansion of every finished question
SCORED = "scored.jsonl"  # SRLM: every sampled solution with its mean score
DIAGNOSTICS = "diagnostics.json"
TEST_TIME_STAGE = "06_test_time_scaling"  # the step search as a way to solve test problems (paper Table 5)


@dataclass(frozen=True)
class Layout:
    """Where a run's files live. One seed: results/<run>/<arm>/M<k>/...; several seeds get a
    seed<s>/ level between the run folder and the arm."""

    root: Path
    seed: int
    multi_seed: bool = False

    @property
    def seed_dir(self) -> Path:
        return self.root / f"seed{self.seed}" if self.multi_seed else self.root

    @property
    def data_dir(self) -> Path:
        return self.seed_dir / "data"

    def model_dir(self, arm: str, k: int) -> Path:
        """`arm`'s M_k: in the folder of the arm that made it (psrlm/M1 for the verified arm's M1).
        M0 is `psr.study.data.m0_model`'s to place (a tiny preset's is here, in the base arm's
        folder; a real preset's is its base model)."""
        return self.seed_dir / model_arm(arm, k) / f"M{k}" / "model"

    def stage_dir(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / stage

    def notebook_path(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / f"{stage}.ipynb"

    def marker_path(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / f".{stage}.done.json"


def run_root(params: Params) -> Path:
    return Path(params.run.results_dir) / params.run.name


def layout_for(params: Params, seed: int) -> Layout:
    return Layout(run_root(params), seed, multi_seed=len(params.run.seeds) > 1)

