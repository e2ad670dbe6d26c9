"""What a notebook works with: the run's params, its layout and which (seed, arm, M_k) it is.

`psr run` passes every notebook the run's resolved `params.json` (the params it validated, once);
a notebook opened by hand names a YAML preset instead (its `parameters` cell: params/tiny.yaml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psr.config import Params, load
from psr.io import read_json
from psr.models import set_threads
from psr.prompts import Templates
from psr.study.data import m0_model
from psr.study.layout import Layout, layout_for


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def load_params(params_path: str | Path, overrides: list[str] | None = None) -> Params:
    """A notebook's params: a run's resolved params.json, or a preset (overrides apply on top).

    JupyterLab starts a notebook's kernel in notebooks/, but the study's relative paths (the
    preset, `results/`) are relative to the project root, where `psr run` works; so a kernel
    that starts in notebooks/ moves to the root first."""
    if Path.cwd().resolve() == (PROJECT_ROOT / "notebooks").resolve():
        os.chdir(PROJECT_ROOT)
    return load(params_path, list(overrides or []))


@dataclass
class Context:
    """What a notebook needs: the validated params and where its files go."""

    params: Params
    layout: Layout
    arm: str
    k: int
    seed: int

    @classmethod
    def create(cls, params_path: str | Path, overrides: list[str] | None, seed: int, arm: str, k: int) -> "Context":
        params = load_params(params_path, overrides)
        set_threads(params.run.torch_threads)
        return cls(params=params, layout=layout_for(params, seed), arm=arm, k=k, seed=seed)

    def stage_dir(self, stage: str) -> Path:
        d = self.layout.stage_dir(self.arm, self.k, stage)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def model_dir(self) -> Path:
        """M_k's folder; for M0 `psr.study.data.m0_model`'s (made on first use, if the run has
        not made it yet)."""
        if self.k == 0:
            return m0_model(self.params, self.layout)
        return self.layout.model_dir(self.arm, self.k)

    @property
    def templates(self) -> Templates:
        return Templates.for_params(self.params)


def load_json_if(path: Path) -> Any:
    return read_json(path) if path.exists() else None
