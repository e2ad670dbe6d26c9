"""What a notebook reads: `psr run` hands every notebook the run's resolved params.json (the
params it validated), with only the per-stage thread count on top; a notebook opened by hand
reads a preset, also from the notebooks/ folder JupyterLab starts its kernel in."""

from __future__ import annotations

import os
from pathlib import Path

from psr.config import load
from psr.study import runner
from psr.study.context import load_params
from psr.study.keys import STAGES

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "params" / "tiny.yaml"


def test_every_notebook_of_a_run_reads_the_runs_resolved_params(tmp_path, monkeypatch):
    overrides = [f"run.results_dir={tmp_path}", "run.name=r", "run.iterations=1", "task.questions_per_iteration=[4]",
                 "search.width=4", "run.workers=1"]
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(runner, "prepare_data", lambda *a, **kw: None)
    monkeypatch.setattr(runner, "m0_model", lambda *a, **kw: None)
    monkeypatch.setattr(runner, "execute_notebook",
                        lambda src, dst, parameters, *a, **kw: calls.append((Path(src).stem, parameters)))
    runner.run(TINY, overrides, log=lambda msg: None)

    resolved = tmp_path / "r" / "params.json"
    expected = load(TINY, overrides)
    assert sorted({stage for stage, _ in calls}) == sorted([*STAGES, "07_report"])
    for stage, parameters in calls:
        assert parameters["params_path"] == str(resolved)
        extra = parameters["overrides"]  # a stage that runs alone may use every core
        assert all(o.startswith("run.torch_threads=") for o in extra) and len(extra) <= 1
        params = load_params(parameters["params_path"], extra)
        assert without_threads(params) == without_threads(expected)
        assert params.run.torch_threads == (int(extra[0].split("=")[1]) if extra else expected.run.torch_threads)


def without_threads(params) -> dict:
    data = params.to_dict()
    del data["run"]["torch_threads"]
    return data


def test_a_notebook_opened_by_hand_in_the_notebooks_folder_reads_the_preset(monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    params = load_params("params/tiny.yaml", ["search.width=3"])
    assert Path(os.getcwd()) == REPO  # results/ and presets resolve as they do for `psr run`
    assert params.search.width == 3 and params.digest("task") == load(TINY).digest("task")
