"""The shipped M1s (`models/tiny/`, `warmup.shipped` of the tiny preset) are what the committed
reference run started from, on whatever machine runs this: the run's own data and tokenizer match
them (so `make study` copies instead of retraining ~45 min per model), and their greedy answers
agree with the committed evaluation of the reference run (`results/tiny-3seeds/`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from psr.io import read_jsonl
from psr.study import stages
from psr.study.context import Context
from psr.study.data import prepare_data

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "tiny-3seeds"
N = 100  # test problems re-evaluated: a few seconds on one core


@pytest.mark.parametrize("arm", ["psrlm", "srlm"])
def test_a_fresh_run_copies_the_shipped_m1_and_it_answers_as_committed(arm, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset names models/tiny relative to itself
    monkeypatch.setattr("psr.train.stages.run_sft", lambda *a, **k: pytest.fail(
        "models/tiny no longer matches the tiny preset's data, tokenizer or warm-up settings: "
        "retrain (psr run params/tiny.yaml -p warmup.shipped= -p 'run.seeds=[0,1,2]') and psr ship-m1"))
    ctx = Context.create("params/tiny.yaml", [f"run.results_dir={tmp_path}", f"run.arms=[{arm}]",
                                              f"eval.limit={N}"], 0, arm, 1)
    prepare_data(ctx.params, ctx.layout, log=lambda _: None)
    summary = stages.warmup_stage(ctx)
    assert summary["source"].startswith("shipped:")
    with stages.policy_for(ctx) as policy:
        stages.evaluate_stage(ctx, policy)
    ours = {r["id"]: r["correct"] for r in read_jsonl(ctx.stage_dir("05_evaluate") / "synthetic.jsonl")}
    committed = {r["id"]: r["correct"] for r in read_jsonl(REFERENCE / "seed0" / arm / "M1" / "05_evaluate" / "synthetic.jsonl")}
    assert len(ours) == N and set(ours) <= set(committed)
    agree = sum(ours[i] == committed[i] for i in ours)
    assert agree >= N - 2, f"{N - agree} of {N} answers differ from the committed reference"
