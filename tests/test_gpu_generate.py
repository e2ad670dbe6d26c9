"""`psr gpu-check --mode generate` on CPU with the tiny architecture: each generation backend
decodes the same prompts and reports tokens per second; continuous batching's page size goes
under the name this transformers uses. (The GPU figures need a GPU: not measured here.)"""

from __future__ import annotations

import dataclasses
import json

import transformers

from psr.cli import main as cli_main
from psr.tools.gpu_generate import continuous_batching_kwargs


def test_tiny_generation_mode_measures_every_hf_backend(capsys):
    argv = ["gpu-check", "--mode", "generate", "--arch", "tiny", "--prompts", "4", "--prompt-len", "32",
            "--new-tokens", "8", "--backends", "hf-bf16,hf-continuous"]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["mode"] == "generate" and report["arch"] == "tiny"
    for name in ("hf-bf16", "hf-continuous"):
        phase = report["phases"][name]
        assert 0 < phase["tokens"] <= 4 * 8 and phase["tokens_per_s"] > 0
        assert any(line.startswith(name) for line in lines[:-1])
    assert report["phases"]["hf-continuous"]["page_option"] == "page_size"  # transformers 5.23


def test_the_page_size_goes_under_the_name_this_transformers_has(monkeypatch):
    kwargs = continuous_batching_kwargs(64, num_blocks=10, max_batch_tokens=256)
    config = kwargs["continuous_batching_config"]
    assert (config.page_size, config.num_blocks, config.max_batch_tokens) == (64, 10, 256)

    @dataclasses.dataclass
    class Older:  # the class before the rename to page_size
        block_size: int = 256
        num_blocks: int | None = None

    monkeypatch.setattr(transformers, "ContinuousBatchingConfig", Older, raising=False)
    config = continuous_batching_kwargs(64, num_blocks=10, max_batch_tokens=256)["continuous_batching_config"]
    assert (config.block_size, config.num_blocks) == (64, 10)
    monkeypatch.setattr(transformers, "ContinuousBatchingConfig", None)  # before the class existed
    assert continuous_batching_kwargs(64, 10, 256) == {
        "generation_config_updates": {"block_size": 64, "num_blocks": 10, "max_batch_tokens": 256}}
