"""The whole study through papermill at smoke size: both arms, K = 2, every notebook executed.

Also: a run killed with SIGKILL in the middle of a stage resumes and ends with the same
metrics.json as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = [
    "run.iterations=2", "task.n_ift=60", "task.n_eft=60", "task.n_eft_test=8", "task.n_test=8",
    "task.questions_per_iteration=[4,4]", "task.n_srlm_eft=60",
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128",
    "warmup.max_steps=150", "warmup.per_device_batch_size=8", "warmup.batch_size=8", "warmup.learning_rate=0.005",
    "dpo.max_steps=2", "dpo.per_device_batch_size=4", "dpo.batch_size=4",
    "search.width=3", "search.max_step_tokens=12", "search.expansion_cap=3", "search.keep_unfinished=true",
    "judge.max_new_tokens=40", "srlm.n_candidates=2", "srlm.n_score_repeats=1", "srlm.max_new_tokens=24",
    "srlm.score_max_new_tokens=16", "eval.max_new_tokens=24",
]


def psr_run(results: Path, name: str, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "psr", "run", "params/tiny.yaml", "-p", f"run.name={name}",
            "-p", f"run.results_dir={results}"]
    for o in SMOKE:
        args += ["-p", o]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between two runs: wall times, paths, dates."""
    drop = {"wall_s", "wall_time_s", "created", "model", "train_runtime", "train_samples_per_second",
            "train_steps_per_second", "peak_memory", "resumed", "run", "params", "source", "path",
            "peak_rss_mb", "peak_cuda_mb", "reference", "parent"}

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in drop}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(metrics)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = finish(psr_run(results, "ref"))
    return results / "ref", out


@pytest.mark.slow
def test_smoke_study_writes_every_arm_iteration_and_benchmark(reference):
    root, out = reference
    m = json.loads((root / "metrics.json").read_text())
    assert set(m["arms"]) == {"psrlm", "srlm"}
    for arm, models in m["arms"].items():
        assert set(models) == {"M1", "M2", "M3"}
        for name, cell in models.items():
            acc = cell["eval"]["synthetic"]["accuracy"]
            assert 0 <= acc <= 100 and cell["eval"]["synthetic"]["n"] == 8
            for key in ("accuracy", "position_consistency", "parse_rate"):
                assert 0 <= cell["judge"][key] <= 100
            assert set(cell["wall_s"]) >= {"03_judging", "05_evaluate"}
        for k in ("M1", "M2"):
            assert models[k]["search"]["questions"] == 4
            assert "dpo" in models[k]
    # the warm-up taught the formats: verdicts and scores parse, so there were pairs for DPO to use
    assert m["arms"]["psrlm"]["M1"]["judge"]["parse_rate"] > 50
    assert m["arms"]["srlm"]["M1"]["search"]["score_parse_rate"] > 50
    assert sum(m["arms"][a][k]["search"]["pairs"] for a in m["arms"] for k in ("M1", "M2")) > 0
    for a in m["arms"]:
        for k in ("M1", "M2"):
            assert m["arms"][a][k]["dpo"]["pairs"] == m["arms"][a][k]["search"]["pairs"]
    for f in ("report.md", "accuracy_by_iteration.png", "judge_by_iteration.png", "steps_by_iteration.png",
              "06_report.ipynb", "psrlm/M1/01_warmup_sft.ipynb", "srlm/M3/05_evaluate.ipynb"):
        assert (root / f).is_file(), f
    assert "PSRLM-M3" in (root / "report.md").read_text()
    # a second run finds every stage done and only rewrites the report
    again = finish(psr_run(root.parent, "ref"))
    assert again.count("skipped") == 2 * 11 and "running" not in again.replace("06_report: running", "")


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_gives_the_same_metrics(reference, tmp_path):
    ref_root, _ = reference
    proc = psr_run(tmp_path, "killed", start_new_session=True)
    marker = tmp_path / "killed" / "psrlm" / "M1" / ".02_step_search.done.json"
    deadline = time.time() + 400
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the run never got past the first search"
    time.sleep(4)  # now inside a later stage (03/04), kernels running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    finish(psr_run(tmp_path, "killed"))
    a = json.loads((ref_root / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert comparable(a) == comparable(b)
