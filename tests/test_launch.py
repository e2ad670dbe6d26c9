"""Training under `accelerate launch` (psr.train.launch): world-size-aware gradient accumulation, the
launch command, failures before and after launching, and a real 2-process CPU run (MULTI_CPU,
gloo) of warm-up SFT (full weights) and step-DPO (LoRA merged by rank 0). DeepSpeed is not
installed here: only its absence is checked (a clear error, nothing imported)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from psr import config, lineage
from psr.tools.bench_train import tiny_records
from psr.models import load_policy, train_tokenizer
from psr.prompts import Templates
from psr.train import gradient_accumulation, sft_examples, sft_inputs, step_dpo, step_dpo_examples, warmup_sft
from psr.train.launch import JOB_DIR, LaunchConfig, LaunchError, LaunchFailed, log_path_for
from psr.train.worker import params_from_dict

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)

CPU2 = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_CPU
num_processes: 2
num_machines: 1
use_cpu: true
mixed_precision: 'no'
"""

SMALL = {
    "model.vocab_size": 300, "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
    "model.intermediate_size": 64,
    # 16 SFT examples, 2 per process x 2 processes x 2 accumulation = 8: two optimizer steps
    "warmup.max_steps": -1, "warmup.epochs": 1, "warmup.batch_size": 8, "warmup.per_device_batch_size": 2,
    "warmup.learning_rate": 1e-3,
    # 8 pairs, 1 x 2 x 2 = 4: two optimizer steps
    "dpo.epochs": 1, "dpo.batch_size": 4, "dpo.per_device_batch_size": 1, "dpo.learning_rate": 1e-3,
    "dpo.warmup_ratio": 0.0,
}


def _accelerate_file(folder: Path) -> Path:
    path = folder / "cpu2.yaml"
    path.write_text(CPU2)
    return path


def _params(accelerate_file: Path | str = "", **overrides):
    return config.load(ROOT / "params" / "tiny.yaml").replace(
        {**SMALL, "run.accelerate_config": str(accelerate_file), "run.workers": 1, **overrides}
    )


class _NoLaunch:
    """Stands in for subprocess.Popen: a test that must not start any process fails if called."""

    def __init__(self, *args, **kwargs):
        raise AssertionError(f"a process was launched: {args[0] if args else kwargs}")


@pytest.fixture(scope="module")
def data():
    params = _params()
    templates = Templates.from_params(params.prompts)
    ift, eft, ppd = tiny_records(8)
    tok = train_tokenizer(
        [templates.reasoning_prompt(r.question) + "\n".join(r.steps) for r in ift] + [e.judgment for e in eft], 300
    )
    sft = sft_examples(ift, eft[:8], templates, tok)
    dpo = step_dpo_examples(ppd, templates, tok)
    assert len(sft) == 16 and len(dpo) == 8
    return SimpleNamespace(templates=templates, tok=tok, sft=sft, dpo=dpo)


# ---------------------------------------------------------------------------------------------
# Before any process starts
# ---------------------------------------------------------------------------------------------


def test_accumulation_counts_every_process():
    section = config.DPOParams(batch_size=32, per_device_batch_size=1)
    assert gradient_accumulation(section) == 32
    assert gradient_accumulation(section, 8) == 4  # the 72B preset: 1 x 8 GPUs x 4 = 32
    assert gradient_accumulation(config.DPOParams(batch_size=32, per_device_batch_size=2), 16) == 1
    with pytest.raises(ValueError, match=r"dpo\.batch_size=32 is not divisible by .*per_device_batch_size=8 x 3 processes = 24"):
        gradient_accumulation(config.DPOParams(batch_size=32, per_device_batch_size=8), 3, "dpo")
    with pytest.raises(ValueError, match="world_size"):
        gradient_accumulation(section, 0)


def test_accelerate_config_resolves_relative_to_the_preset(tmp_path):
    (tmp_path / "acc").mkdir()
    _accelerate_file(tmp_path / "acc")
    preset = tmp_path / "preset.yaml"
    preset.write_text("run:\n  accelerate_config: acc/cpu2.yaml\n  workers: 1\n")
    params = config.load(preset)
    assert config.accelerate_config_path(params) == tmp_path / "acc" / "cpu2.yaml"
    cfg = LaunchConfig.for_params(params)
    assert (cfg.distributed_type, cfg.world_size, cfg.use_cpu, cfg.local_multi_cpu) == ("MULTI_CPU", 2, True, True)
    assert config.accelerate_config_path(config.load(ROOT / "params" / "tiny.yaml")) is None
    with pytest.raises(config.ConfigError, match=r"run\.accelerate_config 'acc/missing\.yaml': no such file"):
        config.load(preset, ["run.accelerate_config=acc/missing.yaml"])
    # params changed after loading are checked when training starts
    with pytest.raises(LaunchError, match="no such file"):
        LaunchConfig.for_params(params.replace({"run.accelerate_config": "acc/missing.yaml"}))
    (tmp_path / "bad.yaml").write_text("distributed_type: MULTI_CPU\nnot_an_accelerate_key: 1\n")
    with pytest.raises(LaunchError, match="not a valid accelerate config"):
        LaunchConfig.read(tmp_path / "bad.yaml")


def test_launch_command(tmp_path):
    cpu = LaunchConfig.read(_accelerate_file(tmp_path))
    cmd, env = cpu.command(tmp_path / "job.json")
    assert cmd[:5] == [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file"]
    # accelerate alone would start one MULTI_CPU process without mpirun: torchrun + gloo instead
    assert "--multi_gpu" in cmd and env["ACCELERATE_USE_CPU"] == "true"
    assert cmd[-3:] == ["-m", "psr.train.worker", str(tmp_path / "job.json")]
    assert cmd[cmd.index("--main_process_port") + 1] == "0"
    zero3 = LaunchConfig.read(ROOT / "params" / "accelerate" / "zero3.yaml")
    cmd, env = zero3.command(tmp_path / "job.json")
    assert zero3.world_size == 8 and "--multi_gpu" not in cmd and "ACCELERATE_USE_CPU" not in env


def test_params_round_trip_through_the_job():
    params = _params("x.yaml")
    back = params_from_dict(params.to_dict())
    assert back == params and back.digest() == params.digest()


def test_non_divisible_batch_fails_before_launching(data, tmp_path, monkeypatch):
    monkeypatch.setattr("psr.train.launch.subprocess.Popen", _NoLaunch)
    params = _params(_accelerate_file(tmp_path), **{"warmup.batch_size": 6})  # 6 % (2 x 2 processes)
    with pytest.raises(ValueError, match=r"warmup\.batch_size=6 is not divisible by warmup\.per_device_batch_size=2 x 2 processes = 4"):
        warmup_sft(params, data.sft, tmp_path / "m1", tokenizer=data.tok, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu2.yaml"]  # no staging folder, no log
    with pytest.raises(LaunchError, match="callbacks"):
        warmup_sft(_params(tmp_path / "cpu2.yaml"), data.sft, tmp_path / "m1", tokenizer=data.tok, callbacks=[object()])


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_deepspeed_config_without_deepspeed_is_a_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.setattr("psr.train.launch.subprocess.Popen", _NoLaunch)
    params = config.load(ROOT / "params" / "qwen2.5-math-72b.yaml")
    with pytest.raises(LaunchError, match="uses DeepSpeed, which is not installed"):
        step_dpo(params, tmp_path / "m1", data.dpo, tmp_path / "m2")
    assert "deepspeed" not in sys.modules
    assert not list(tmp_path.iterdir())


def test_training_inside_a_launch_does_not_launch_again(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="inside a multi-process launch"):
        warmup_sft(_params(), data.sft, tmp_path / "m1", tokenizer=data.tok)


# ---------------------------------------------------------------------------------------------
# Two CPU processes
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("launch")
    params = _params(_accelerate_file(work))
    m1 = warmup_sft(params, data.sft, work / "m1", tokenizer=data.tok, seed=0)
    return SimpleNamespace(work=work, params=params, m1=m1)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_warmup_sft_on_two_processes(launched, data, monkeypatch):
    m1 = launched.m1
    m = lineage.read_manifest(m1)
    assert m["stage"] == "warmup_sft" and m["content"] == "full"
    assert m["world_size"] == 2 and m["per_device_batch_size"] == 2
    assert m["gradient_accumulation_steps"] == 2 and m["effective_batch_size"] == launched.params.warmup.batch_size == 8
    assert m["metrics"]["global_steps"] == 2  # 16 examples / 8; without the world size it would be 1
    assert len(m["memory_per_process"]) == 2
    assert m["inputs"] == lineage.normalised(sft_inputs(launched.params, data.sft, base=None, tokenizer=data.tok, seed=0))
    model, tok = load_policy(m1, launched.params.model)
    assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == data.tok.eos_token
    assert not (m1 / JOB_DIR).exists() and not (m1 / "training_args.bin").exists() and not _leftovers(launched.work)
    log = log_path_for(m1).read_text()
    assert "--multi_gpu" in log and "[rank 0/2] warmup_sft done" in log and "[rank 1/2] warmup_sft done" in log
    assert "found in sys.modules" not in log  # runpy ran the worker module once, not a second copy
    # finished: a second call returns without starting any process
    monkeypatch.setattr("psr.train.launch.subprocess.Popen", _NoLaunch)
    assert warmup_sft(launched.params, data.sft, m1, tokenizer=data.tok, seed=0) == m1


@pytest.mark.slow
def test_step_dpo_lora_on_two_processes_is_merged_by_rank_0(launched, data):
    params = launched.params.replace({"model.adapter": "lora", "model.lora.r": 4})
    m2 = step_dpo(params, launched.m1, data.dpo, launched.work / "m2", seed=0)
    m = lineage.read_manifest(m2)
    assert m["stage"] == "step_dpo" and m["content"] == "full" and m["parent"] == str(launched.m1)
    assert m["world_size"] == 2 and m["gradient_accumulation_steps"] == 2 and m["effective_batch_size"] == 4
    assert m["metrics"]["global_steps"] == 2
    assert not (m2 / "adapter_config.json").exists() and not (m2 / ".adapter").exists()
    before, after = load_file(launched.m1 / "model.safetensors"), load_file(m2 / "model.safetensors")
    assert before.keys() == after.keys()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 0  # the adapter was merged
    model, _ = load_policy(m2, params.model)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not _leftovers(launched.work)


@pytest.mark.slow
def test_a_failing_launch_names_its_log(data, tmp_path):
    (tmp_path / "empty").mkdir()  # not a model: every process fails to load it
    out = tmp_path / "m2"
    with pytest.raises(LaunchFailed, match=r"(?s)exited with code [1-9]: .*Error: .*full log: .*m2\.launch\.log") as err:
        step_dpo(_params(_accelerate_file(tmp_path)), tmp_path / "empty", data.dpo, out, seed=0)
    assert str(tmp_path / "empty") in str(err.value).splitlines()[0]  # the worker's own error, first
    assert log_path_for(out).is_file() and not out.exists() and not _leftovers(tmp_path)
