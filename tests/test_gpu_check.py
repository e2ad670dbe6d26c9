"""`psr gpu-check`: the 7B architecture is Qwen2.5-Math-7B's, and the same code path runs end to end
on a tiny random Qwen2 on CPU (SFT, step-DPO, one judged search step) and reports its numbers.
The 7B measurement itself needs a GPU and is not run here."""

from __future__ import annotations

import json

import pytest
import torch

from psr.tools import gpu_check
from psr.cli import main as cli_main
from psr.config import PromptParams
from psr.prompts import Templates


def _run(capsys, *argv: str) -> tuple[str, dict]:
    assert cli_main(["gpu-check", *argv]) == 0  # through the CLI: options reach gpu_check
    out = capsys.readouterr().out.strip().splitlines()
    return "\n".join(out[:-1]), json.loads(out[-1])


def _check_phases(report: dict, steps: int, batch: int, questions: int, width: int) -> None:
    phases = report["phases"]
    assert list(phases) == ["build", "sft", "dpo", "search"]
    for name in ("sft", "dpo", "search"):
        p = phases[name]
        assert p["peak_mb"] > 50 and p["tokens"] > 0 and p["tokens_per_s"] > 0, (name, p)
        assert p["wall_s"] >= p["compute_s"] > 0, (name, p)
    # every SFT example was seen once: tokens trained on = examples x their mean length
    n = steps * batch
    assert phases["sft"]["tokens"] == pytest.approx(n * phases["sft"]["mean_example_tokens"], abs=1)
    # DPO runs prompt+chosen and prompt+rejected for every pair
    assert phases["dpo"]["tokens"] == pytest.approx(2 * n * phases["dpo"]["mean_example_tokens"], abs=1)
    # one search step: w candidates per question, every ordered pair judged
    assert phases["search"]["candidates"] == questions * width
    assert phases["search"]["judge_calls"] == questions * width * (width - 1)
    assert report["memory"] == ("cuda_max_allocated" if torch.cuda.is_available() else "peak_rss")


def test_tiny_arch_runs_the_whole_path_and_prints_numbers(capsys):
    table, report = _run(capsys, "--arch", "tiny", "--steps", "2", "--seq-len", "160")
    assert report["arch"] == "tiny" and report["seq_len"] == 160 and report["steps"] == 2
    assert 100_000 < report["params"] < 1_000_000
    _check_phases(report, steps=2, batch=report["batch"], questions=2, width=report["width"])
    # the table carries the same numbers, one row per phase
    assert "tokens/s" in table and ("peak RSS MiB" in table or "peak GPU MiB" in table)
    for name in ("build", "sft", "dpo", "search"):
        row = next(line for line in table.splitlines() if line.startswith(name + " "))
        if name != "build":
            assert str(report["phases"][name]["tokens"]) in row
    # 4-bit is used when bitsandbytes runs here, and the output says which it was
    assert isinstance(report["four_bit"], bool) and report["four_bit_note"]
    assert ("4-bit: yes" in table) == report["four_bit"]
    ok, _ = gpu_check.four_bit_works("cuda" if torch.cuda.is_available() else "cpu")
    assert report["four_bit"] == ok


def test_no_4bit_runs_lora_on_the_full_base_and_says_so(capsys):
    table, report = _run(capsys, "--arch", "tiny", "--steps", "1", "--no-4bit", "--width", "2", "--questions", "1")
    assert report["four_bit"] is False
    assert "4-bit: NO (LoRA on the full-precision base)" in table
    _check_phases(report, steps=1, batch=report["batch"], questions=1, width=2)


def test_7b_architecture_is_qwen25_math_7b():
    from transformers import Qwen2ForCausalLM

    tok = gpu_check.stand_in_tokenizer(Templates.from_params(PromptParams(style="paper")))
    config = gpu_check.qwen2_config("7b", tok)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (3584, 18944, 28)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (28, 4, 152064)
    assert config.rope_parameters["rope_theta"] == 10000.0 and config.max_position_embeddings == 4096
    assert config.tie_word_embeddings is False
    with torch.device("meta"):  # no memory: only shapes
        model = Qwen2ForCausalLM(config)
    # Qwen2.5-Math-7B has 7.62B parameters (q/k/v biases included, untied lm_head)
    assert sum(p.numel() for p in model.parameters()) == 7_615_616_512
    # the stand-in tokenizer's ids all exist in the model's vocabulary
    assert len(tok) <= config.vocab_size and tok.chat_template


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_7b_without_gpu_fails_cleanly(capsys):
    assert gpu_check.main(["--arch", "7b"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seq-len", "10"], ["--width", "1"], ["--steps", "0"], ["--arch", "13b"]])
def test_bad_options_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--arch", "tiny", *argv] if "--arch" not in argv else argv)
    assert e.value.code == 2


def test_kept_work_dir_reuses_its_random_base(capsys, tmp_path):
    work = str(tmp_path / "work")
    _, first = _run(capsys, "--arch", "tiny", "--steps", "1", "--work-dir", work, "--keep")
    assert first["phases"]["build"]["reused"] is False
    _, second = _run(capsys, "--arch", "tiny", "--steps", "1", "--work-dir", work, "--keep")
    assert second["phases"]["build"]["reused"] is True and second["params"] == first["params"]
    _check_phases(second, steps=1, batch=second["batch"], questions=2, width=second["width"])


def test_work_dir_keeps_what_it_did_not_write(capsys, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("a user's file")
    _run(capsys, "--arch", "tiny", "--steps", "1", "--work-dir", str(work))
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]
