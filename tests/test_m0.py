"""M0, the model before warm-up: the tiny preset's is the random model the warm-up starts from,
saved once per seed where M0's stages load it; a real preset's is its base model, not copied; M0's
judge is shown worked examples from the EFT training data, M1 on are not."""

from __future__ import annotations

from pathlib import Path

import torch

from psr import lineage
from psr.config import load
from psr.io import read_jsonl
from psr.models import build_tiny_model, load_policy
from psr.records import EFTRecord
from psr.study import stages
from psr.study.context import Context
from psr.study.data import m0_model, m0_tokenizer, prepare_data
from psr.study.layout import layout_for

REPO = Path(__file__).resolve().parent.parent
SMALL = ["task.n_ift=40", "task.n_eft=40", "task.n_eft_test=4", "task.n_test=4", "task.questions_per_iteration=[4,4,4]",
         "task.n_srlm_eft=20", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
         "model.intermediate_size=64"]


def test_the_tiny_m0_is_the_warm_ups_starting_model_saved_once_per_seed(tmp_path):
    params = load(REPO / "params" / "tiny.yaml", [f"run.results_dir={tmp_path}", "run.seeds=[0, 1]", *SMALL])
    layout = layout_for(params, 1)
    prepare_data(params, layout, log=lambda *a: None)
    folder = m0_model(params, layout)
    assert folder == tmp_path / "tiny" / "seed1" / "psrlm" / "M0" / "model"  # the base arm's
    manifest = lineage.read_manifest(folder)
    assert manifest["stage"] == "m0" and manifest["inputs"]["seed"] == 1
    saved, _ = load_policy(folder, params.model)
    started = build_tiny_model(params.model, m0_tokenizer(params, layout), 1)  # what warmup_sft builds for seed 1
    for (name, a), (_, b) in zip(saved.state_dict().items(), started.state_dict().items()):
        assert torch.equal(a, b), name
    other = build_tiny_model(params.model, m0_tokenizer(params, layout), 0)
    assert not torch.equal(other.state_dict()["model.embed_tokens.weight"], saved.state_dict()["model.embed_tokens.weight"])
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert m0_model(params, layout) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # kept
    ctx = Context(params=params, layout=layout, arm="psrlm", k=0, seed=1)
    assert ctx.model_dir == folder and Context(params=params, layout=layout, arm="srlm", k=0, seed=1).model_dir == folder


def test_a_real_presets_m0_is_its_base_model_and_nothing_is_written(tmp_path):
    params = load(REPO / "params" / "qwen2.5-math-7b.yaml", [f"run.results_dir={tmp_path}"])
    assert m0_model(params, layout_for(params, 0)) == Path(params.model.name_or_path)
    assert not any(tmp_path.iterdir())


def test_only_m0s_judge_is_shown_worked_examples_from_the_eft_training_data(tmp_path):
    params = load(REPO / "params" / "tiny.yaml", [f"run.results_dir={tmp_path}", *SMALL])
    layout = layout_for(params, 0)
    prepare_data(params, layout, log=lambda *a: None)
    eft = {r.id: r for r in read_jsonl(layout.data_dir / "eft.jsonl", EFTRecord)}
    shots = stages.judge_shots(Context(params=params, layout=layout, arm="psrlm", k=0, seed=0))
    assert len(shots) == params.m0.judge_shots == 3 and all(eft[s.id] == s for s in shots)
    assert stages.judge_shots(Context(params=params, layout=layout, arm="psrlm", k=1, seed=0)) == []
    none = params.replace({"m0.judge_shots": 0})
    assert stages.judge_shots(Context(params=none, layout=layout, arm="psrlm", k=0, seed=0)) == []
