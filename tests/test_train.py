"""Warm-up SFT and step-DPO on TRL: data layout, the EOS rule, the prompt/step token boundary
(tiny tokenizer and two real byte-level BPE layouts), training behaviour, adapters, lineage."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from psr import config, lineage
from psr.tools import ship_m1
from psr.tools.bench_train import tiny_records
from psr.models import build_tiny_model, load_policy, train_tokenizer
from psr.prompts import Templates, chat_prompt, parse_verdict
from psr.records import PPDPair, SolutionPair, SRLMEFTRecord
from psr.train import (
    boundary_merges,
    build_dpo_trainer,
    build_sft_trainer,
    dpo_inputs,
    sft_examples,
    sft_inputs,
    shipped_m1,
    solution_dpo_examples,
    srlm_sft_examples,
    step_dpo,
    step_dpo_examples,
    warmup_sft,
    warmup_steps,
)
from psr.train.trainers import causal_mask_when_right_padded, right_padded

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _params(**overrides):
    base = {
        "model.vocab_size": 400,
        "warmup.max_steps": 60,
        "warmup.batch_size": 16,
        "warmup.per_device_batch_size": 16,
        "warmup.learning_rate": 3e-3,
        "dpo.epochs": 3,
        "dpo.batch_size": 8,
        "dpo.per_device_batch_size": 8,
        "dpo.learning_rate": 1e-3,
    }
    return config.load(ROOT / "params" / "tiny.yaml").replace({**base, **overrides})


def _corpus(templates, ift, eft):
    return [templates.reasoning_prompt(r.question) + "\n" + "\n".join(f"Step {i}: {s}" for i, s in enumerate(r.steps, 1)) for r in ift] + [
        templates.judge_prompt(e.question, e.previous_steps, e.step_a, e.step_b) + e.judgment for e in eft
    ]


# Pairs whose prompts end after punctuation, multi-digit numbers and a boxed answer, with every
# combination of final/non-final chosen and rejected steps.
EDGE_PAIRS = [
    PPDPair("e1", "12 + 30 - 5", ["We add first.", "12 + 30 = 42."], "42 - 5 = 37.", "42 - 5 = 38.", False, [4, 1], 1),
    PPDPair(
        "e2", "12 + 30 - 5", ["12 + 30 = 42", "42 - 5 = 37"], "The answer is \\boxed{37}.", "So 37 - 1 = 36", True, [5, 0], 1
    ),
    PPDPair("e3", "12 + 30 - 5", [], "12 + 30 = 42", "The answer is \\boxed{41}.", False, [3, 2], 1, rejected_is_final=True),
    PPDPair("e4", "7 * 8", ["7 * 8 = 56"], "The answer is \\boxed{56}.", "The answer is \\boxed{54}.", True, [5, 0], 1, True),
]


# ---------------------------------------------------------------------------------------------
# Real byte-level BPE tokenizers, built locally (no hub): GPT-2 layout and Qwen2 layout
# ---------------------------------------------------------------------------------------------

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def bpe_tokenizer(style: str, corpus: list[str]):
    """`gpt2`: the GPT-2 pre-tokenizer regex (ByteLevel with use_regex), numbers kept whole, eos
    <|endoftext|>. `qwen2`: Qwen2's split regex (single digits, punctuation glued to following
    newlines) then byte-level, eos <|im_end|>. Both with a ChatML template, trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        eos = "<|endoftext|>"
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        eos = "<|im_end|>"
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def data():
    params = _params()
    templates = Templates.from_params(params.prompts)
    ift, eft, _ = tiny_records(4)
    _, _, ppd = tiny_records(8, seed=1)
    big_ift, big_eft, _ = tiny_records(200, seed=3)
    corpus = _corpus(templates, big_ift + ift, big_eft + eft) + [
        text for p in EDGE_PAIRS for text in (p.chosen, p.rejected, *p.previous_steps)
    ]
    return SimpleNamespace(params=params, templates=templates, ift=ift, eft=eft, ppd=ppd, corpus=corpus)


@pytest.fixture(scope="module")
def tokenizers(data):
    tiny = train_tokenizer(_corpus(data.templates, data.ift, data.eft) + data.corpus[:50], 400)
    return {"tiny": tiny, "gpt2": bpe_tokenizer("gpt2", data.corpus), "qwen2": bpe_tokenizer("qwen2", data.corpus)}


@pytest.fixture(scope="module")
def m1(data, tokenizers, tmp_path_factory):
    """The tiny preset's M0 -> M1: a random model SFT-trained on a few templated examples."""
    work = tmp_path_factory.mktemp("lineage")
    tok = tokenizers["tiny"]
    examples = sft_examples(data.ift, data.eft, data.templates, tok) * 8
    t0 = time.perf_counter()
    out = warmup_sft(data.params, examples, work / "m1", tokenizer=tok, seed=0)
    return SimpleNamespace(dir=out, work=work, tok=tok, examples=examples, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Data layout
# ---------------------------------------------------------------------------------------------


def test_step_dpo_examples_layout(data, tokenizers):
    tok = tokenizers["tiny"]
    ex = step_dpo_examples(EDGE_PAIRS, data.templates, tok)
    base = chat_prompt(tok, data.templates.reasoning_prompt("12 + 30 - 5"))
    assert ex[0]["prompt"] == base + "Step 1: We add first.\nStep 2: 12 + 30 = 42.\n"
    assert ex[0]["chosen"] == "Step 3: 42 - 5 = 37.\n" and ex[0]["rejected"] == "Step 3: 42 - 5 = 38.\n"
    assert ex[1]["chosen"] == "Step 3: The answer is \\boxed{37}." + tok.eos_token
    assert ex[1]["rejected"] == "Step 3: So 37 - 1 = 36\n"  # rejected_is_final=False: no EOS
    assert ex[2]["prompt"] == base and ex[2]["chosen"] == "Step 1: 12 + 30 = 42\n"
    assert ex[2]["rejected"].endswith("\\boxed{41}." + tok.eos_token)


def test_sft_and_srlm_and_solution_examples(data, tokenizers):
    tok = tokenizers["tiny"]
    ex = sft_examples(data.ift[:1], data.eft[:1], data.templates, tok)
    assert ex[0]["completion"] == "\n".join(f"Step {i}: {s}" for i, s in enumerate(data.ift[0].steps, 1)) + tok.eos_token
    assert ex[1]["prompt"].startswith("<|user|>\n") and "[The Start of Assistant A's" in ex[1]["prompt"]
    assert ex[1]["completion"] == data.eft[0].judgment + tok.eos_token
    srlm = srlm_sft_examples([], [SRLMEFTRecord("s", "1 + 1", "Step 1: 2", 4, "Fine. Score: 4")], data.templates, tok)
    assert "<response>Step 1: 2</response>" in srlm[0]["prompt"] and srlm[0]["completion"] == "Fine. Score: 4<|eos|>"
    sol = solution_dpo_examples([SolutionPair("p", "1 + 1", "Step 1: \\boxed{2}", "Step 1: \\boxed{3}", 5, 1, 1)], data.templates, tok)
    assert sol[0]["chosen"].endswith("{2}<|eos|>") and sol[0]["rejected"].endswith("{3}<|eos|>")


# ---------------------------------------------------------------------------------------------
# What the trainers actually train on: token boundary and EOS
# ---------------------------------------------------------------------------------------------


def _tiny_model(tok):
    mp = config.ModelParams(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=len(tok))
    return build_tiny_model(mp, tok, seed=0)


@pytest.mark.parametrize("style", ["tiny", "gpt2", "qwen2"])
def test_dpo_token_boundary_and_eos_rule(style, data, tokenizers, tmp_path):
    tok = tokenizers[style]
    # the real tokenizers really merge (multi-character tokens), so a boundary slip could happen
    assert len(tok("Step 12: 28 + 16 = 44. The answer")["input_ids"]) < 20
    pairs = EDGE_PAIRS + data.ppd
    examples = step_dpo_examples(pairs, data.templates, tok)
    assert boundary_merges(examples, tok) == []
    model = _tiny_model(tok)
    trainer = build_dpo_trainer(data.params, model, tok, examples, tmp_path, ref_model=copy.deepcopy(model))
    rows = trainer.train_dataset
    assert len(rows) == len(examples)
    eos = tok.eos_token_id
    for pair, ex, row in zip(pairs, examples, rows):
        assert row["prompt_ids"] == tok(ex["prompt"])["input_ids"]  # the whole prompt, nothing merged away
        k = len(pair.previous_steps) + 1
        for side, final in (("chosen", pair.is_final), ("rejected", pair.rejected_is_final)):
            ids = row[f"{side}_ids"]
            text = ex[side]
            assert ids.count(eos) == (1 if final else 0), (side, text)
            assert (ids[-1] == eos) == final
            step_ids = ids[:-1] if final else ids
            step_text = text[: -len(tok.eos_token)] if final else text
            assert step_ids == tok(step_text)["input_ids"]  # exactly the step's tokens
            assert tok.decode(step_ids) == step_text and step_text.startswith(f"Step {k}: ")
            assert step_text.endswith("\n") != final


def test_boundary_check_catches_a_merge(tokenizers):
    tok = tokenizers["gpt2"]
    ok = [{"prompt": "Step 1: 4", "completion": "\nStep 2: x"}]
    merged = [{"prompt": "Step 1: 4", "completion": "2 + 1"}]  # "42" is one GPT-2 pre-token
    assert boundary_merges(ok, tok) == [] and boundary_merges(merged, tok) == [0]


@pytest.mark.parametrize("style", ["tiny", "gpt2"])
def test_sft_single_eos_and_completion_only_loss(style, data, tokenizers, tmp_path):
    tok = tokenizers[style]
    examples = sft_examples(data.ift, data.eft, data.templates, tok)
    model = _tiny_model(tok)
    trainer = build_sft_trainer(data.params, model, tok, examples, tmp_path)
    for ex, row in zip(examples, trainer.train_dataset):
        ids, labels = row["input_ids"], row["labels"]
        prompt_ids = tok(ex["prompt"])["input_ids"]
        completion_ids = tok(ex["completion"])["input_ids"]
        assert ids == prompt_ids + completion_ids  # boundary kept
        assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id  # no double EOS
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        assert labels[len(prompt_ids) :] == completion_ids  # loss on the completion only


def test_right_padded():
    assert right_padded(torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]))
    assert right_padded(torch.ones(2, 4, dtype=torch.bool))
    assert not right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))  # left padding (generation)
    assert not right_padded(torch.tensor([[1, 0, 1]]))  # a hole
    assert not right_padded(torch.tensor([[0, 0, 0]]))  # an empty row
    assert not right_padded(None) and not right_padded(torch.ones(1, 1, 3, 3)) and not right_padded(torch.ones(1, 0))


def test_sft_step_matches_trl_and_skips_the_unlabelled_positions(data, tokenizers, tmp_path, monkeypatch):
    """Our SFT trainer gives TRL's loss and gradients on a padded batch, while the LM head sees only
    the labelled positions and the model runs without the (right-)padding mask."""
    import trl.trainer.utils as trl_utils
    from trl import SFTConfig, SFTTrainer

    tok = tokenizers["tiny"]
    examples = sft_examples(data.ift, data.eft, data.templates, tok)
    model = _tiny_model(tok)
    reference_model = copy.deepcopy(model)
    ours = build_sft_trainer(data.params, model, tok, examples, tmp_path / "ours")
    trl_args = SFTConfig(
        output_dir=str(tmp_path / "trl"), completion_only_loss=True, report_to="none", bf16=False, activation_checkpointing=False
    )
    reference = SFTTrainer(model=reference_model, args=trl_args, train_dataset=ours.train_dataset, processing_class=tok)
    batch = next(iter(ours.get_train_dataloader()))
    mask, labels = batch["attention_mask"], batch["labels"]
    assert right_padded(mask) and not bool(mask.all())  # the batch really is padded

    head_rows, backbone_masks = [], []
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda hidden, *a: head_rows.append(hidden.shape[0]) or apply(hidden, *a)
    )
    model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: backbone_masks.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    use_triton = trl_utils._use_triton
    model.train(), reference_model.train()
    loss = ours.compute_loss(model, dict(batch))
    loss.backward()
    assert trl_utils._use_triton is use_triton  # TRL's module is left as it was
    labelled = int((labels[:, 1:] != -100).sum())
    assert head_rows == [labelled] and labelled < labels[:, 1:].numel() / 2
    assert backbone_masks == [None]
    ref_loss = reference.compute_loss(reference_model, dict(batch))
    ref_loss.backward()
    assert head_rows[1] == labels[:, 1:].numel()  # plain TRL on CPU: every position
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):  # the logged metrics agree too
        assert ours._metrics["train"][key] == pytest.approx(reference._metrics["train"][key], rel=1e-5), key

    # the mask is dropped only in training and only when it is right padding
    ids, left = batch["input_ids"][:, :4], torch.tensor([[0, 1, 1, 1]] * len(mask))
    with torch.no_grad(), causal_mask_when_right_padded(model):
        model(input_ids=ids, attention_mask=left)  # left padding, as generation pads
        model.eval()
        model(input_ids=ids, attention_mask=mask[:, :4])
    assert backbone_masks[-2] is not None and backbone_masks[-1] is not None
    with torch.no_grad():
        model.train()
        with causal_mask_when_right_padded(model):
            model(input_ids=ids, attention_mask=mask[:, :4])
        assert backbone_masks[-1] is None
        model(input_ids=ids, attention_mask=mask[:, :4])  # the hook is gone after the block
        assert backbone_masks[-1] is not None


def test_nll_weight_maps_to_trl_sft_loss(data, tokenizers, tmp_path):
    tok = tokenizers["tiny"]
    params = data.params.replace({"dpo.nll_weight": 0.25})
    model = _tiny_model(tok)
    examples = step_dpo_examples(EDGE_PAIRS, data.templates, tok)
    trainer = build_dpo_trainer(params, model, tok, examples, tmp_path, ref_model=copy.deepcopy(model))
    assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, 0.25]
    assert trainer.beta == params.dpo.beta and trainer.args.bf16 is False
    plain = build_dpo_trainer(data.params.replace({"dpo.nll_weight": 0.0}), _tiny_model(tok), tok, examples, tmp_path,
                              ref_model=copy.deepcopy(model))
    assert plain.loss_types == ["sigmoid"]


# ---------------------------------------------------------------------------------------------
# Behaviour on the tiny preset
# ---------------------------------------------------------------------------------------------


def _greedy(model, tok, prompt: str, n: int = 40) -> str:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_warmup_sft_teaches_steps_and_verdicts(m1, data):
    model, tok = load_policy(m1.dir, data.params.model)
    solution = _greedy(model, tok, chat_prompt(tok, data.templates.reasoning_prompt(data.ift[0].question)))
    assert solution.startswith("Step 1:"), solution
    e = data.eft[0]
    verdict = _greedy(model, tok, chat_prompt(tok, data.templates.judge_prompt(e.question, e.previous_steps, e.step_a, e.step_b)))
    assert parse_verdict(verdict) is not None, verdict


def test_warmup_manifest_and_skip(m1, data):
    m = lineage.read_manifest(m1.dir)
    assert m["stage"] == "warmup_sft" and m["content"] == "full" and m["parent"] is None
    assert (m1.dir / "model.safetensors").is_file() and (m1.dir / "tokenizer.json").is_file()
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) >= 10 and m["metrics"]["train_loss_final"] == losses[-1] < losses[0] / 2
    assert m["wall_time_s"] > 0 and m["memory"]["peak_rss_mb"] > 50
    inputs = sft_inputs(data.params, m1.examples, base=None, tokenizer=m1.tok, seed=0)
    assert lineage.is_complete(m1.dir, inputs)
    assert not lineage.is_complete(m1.dir, sft_inputs(data.params, m1.examples, base=None, tokenizer=m1.tok, seed=1))
    before = (m1.dir / lineage.MANIFEST).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert warmup_sft(data.params, m1.examples, m1.dir, tokenizer=m1.tok, seed=0) == m1.dir
    assert time.perf_counter() - t0 < 2 and (m1.dir / lineage.MANIFEST).stat().st_mtime_ns == before


def test_a_shipped_m1_of_the_same_inputs_is_copied_not_retrained(m1, data, tmp_path, monkeypatch):
    shipped = tmp_path / "models" / "seed0" / "psrlm"
    assert ship_m1.main([str(m1.work.parent), "--to", "unused"]) == 2  # no run layout: a clear refusal
    run = tmp_path / "run"
    (run / "seed0" / "psrlm" / "M1").mkdir(parents=True)
    os.symlink(m1.dir, run / "seed0" / "psrlm" / "M1" / "model")
    index = ship_m1.ship(run, tmp_path / "models")
    assert index["models"]["seed0/psrlm"]["digest"] == lineage.read_manifest(m1.dir)["digest"]
    assert (shipped / "model.safetensors").read_bytes() == (m1.dir / "model.safetensors").read_bytes()
    assert shipped_m1(tmp_path / "models", 0, "psrlm") == shipped
    monkeypatch.setattr("psr.train.stages.run_sft", lambda *a, **k: pytest.fail("retrained a shipped M1"))
    out = warmup_sft(data.params, m1.examples, tmp_path / "M1", tokenizer=m1.tok, seed=0, shipped=shipped)
    assert lineage.read_manifest(out)["digest"] == lineage.read_manifest(m1.dir)["digest"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind
    # another seed's inputs do not match the shipped model: it trains (here: reaches run_sft)
    with pytest.raises(pytest.fail.Exception, match="retrained"):
        warmup_sft(data.params, m1.examples, tmp_path / "M1-seed1", tokenizer=m1.tok, seed=1, shipped=shipped)


def test_shipped_m1_folder_is_checked_at_load(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("warmup:\n  shipped: models/tiny\n")
    with pytest.raises(config.ConfigError, match="warmup.shipped 'models/tiny': no such folder"):
        config.load(preset)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert config.shipped_m1_dir(config.load(preset)) == tmp_path / "models" / "tiny"
    assert config.shipped_m1_dir(config.load(preset, ["warmup.shipped="])) is None
    # where the copy lies is not part of what M1 is: the manifest inputs ignore it
    assert (sft_inputs(config.load(preset), [{"prompt": "p", "completion": "c"}], base=None, seed=0)
            == sft_inputs(config.load(preset, ["warmup.shipped="]), [{"prompt": "p", "completion": "c"}], base=None, seed=0))


def test_step_dpo_raises_reward_margin(m1, data):
    tok = m1.tok
    examples = step_dpo_examples(data.ppd, data.templates, tok) * 2
    m2 = step_dpo(data.params, m1.dir, examples, m1.work / "m2", seed=0)
    m = lineage.read_manifest(m2)
    margins = [h["rewards/margins"] for h in m["log_history"] if "rewards/margins" in h]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # reference = the starting model (M1)
    assert margins[-1] > 0.1 and margins[-1] > margins[0]
    assert m["metrics"]["rewards/margins_final"] == margins[-1]
    assert m["parent"] == str(m1.dir) and m["inputs"]["parent"] == lineage.model_identity(m1.dir)
    assert lineage.is_complete(m2, dpo_inputs(data.params, m1.dir, examples, seed=0))
    # dpo.reference: m1 — starting from M2 against M1, the pairs M2 learned already have a margin
    m3 = step_dpo(data.params.replace({"dpo.max_steps": 1}), m2, examples, m1.work / "m3", ref_dir=m1.dir, seed=0)
    first = [h["rewards/margins"] for h in lineage.read_manifest(m3)["log_history"] if "rewards/margins" in h][0]
    assert first > 0.05
    assert lineage.read_manifest(m3)["inputs"]["reference"] == lineage.model_identity(m1.dir)


def test_lora_is_merged_into_a_plain_dir(m1, data):
    params = data.params.replace({"model.adapter": "lora", "model.lora.r": 4, "dpo.max_steps": 2})
    examples = step_dpo_examples(data.ppd, data.templates, m1.tok)
    out = step_dpo(params, m1.dir, examples, m1.work / "m2-lora", seed=0)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert lineage.read_manifest(out)["content"] == "full"
    model, _ = load_policy(out, data.params.model)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_qlora_trains_4bit_on_cpu_and_continues_the_adapter(m1, data):
    import bitsandbytes as bnb
    from safetensors.torch import load_file

    params = data.params.replace(
        {"model.adapter": "qlora", "model.lora.r": 4, "warmup.max_steps": 3, "dpo.max_steps": 3, "warmup.learning_rate": 1e-3}
    )
    a1 = warmup_sft(params, m1.examples[:32], m1.work / "q1", base=m1.dir, seed=0)
    cfg = json.loads((a1 / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(m1.dir.resolve())
    assert not (a1 / "model.safetensors").exists() and (a1 / "tokenizer.json").is_file()
    model, _ = load_policy(a1, params.model)
    assert any(isinstance(mod, bnb.nn.Linear4bit) for mod in model.modules())
    w1 = load_file(a1 / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in w1.items())  # it trained

    examples = step_dpo_examples(data.ppd, data.templates, m1.tok)
    a2 = step_dpo(params, a1, examples, m1.work / "q2", seed=0)
    cfg2 = json.loads((a2 / "adapter_config.json").read_text())
    assert cfg2["base_model_name_or_path"] == str(m1.dir.resolve())  # same 4-bit base, next adapter
    assert not (a2 / "ref").exists()  # TRL's frozen reference copy is not saved
    w2 = load_file(a2 / "adapter_model.safetensors")
    assert w2.keys() == w1.keys() and all(v.dtype == torch.float32 for v in w2.values())
    diffs = [(w2[k] - w1[k]).abs().max().item() for k in w1]
    assert 0 < max(diffs) < 0.1  # continued from M1's adapter (a fresh one would differ by far more)
    margins = [h["rewards/margins"] for h in lineage.read_manifest(a2)["log_history"] if "rewards/margins" in h]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # reference = the adapter at the start


_KILL_SCRIPT = """
import json, sys, time
from pathlib import Path
import transformers
from psr import config
from psr.models import load_tokenizer
from psr.train import warmup_sft

work = Path(sys.argv[1])
params = config.load(sys.argv[2]).replace(json.loads((work / "overrides.json").read_text()))
tok = load_tokenizer(work / "tok", params.model)
examples = json.loads((work / "examples.json").read_text())

class Slow(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        (work / "started").write_text(str(state.global_step))
        time.sleep(3)

warmup_sft(params, examples, work / "m1", tokenizer=tok, seed=0, callbacks=[Slow()])
"""


def test_sigkill_mid_training_leaves_no_finished_looking_dir(data, tokenizers, tmp_path):
    tok = tokenizers["tiny"]
    overrides = {"model.vocab_size": 400, "warmup.max_steps": 4, "warmup.batch_size": 4, "warmup.per_device_batch_size": 4}
    params = config.load(ROOT / "params" / "tiny.yaml").replace(overrides)
    examples = sft_examples(data.ift, data.eft[:4], data.templates, tok)
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    out = tmp_path / "m1"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path), str(ROOT / "params" / "tiny.yaml")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 90
    while not (tmp_path / "started").exists():
        assert proc.poll() is None, "training child died"
        assert time.time() < deadline, "training child never reached step 1"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    inputs = sft_inputs(params, examples, base=None, tokenizer=_load_tok(tmp_path / "tok", params), seed=0)
    assert not out.exists() and not lineage.is_complete(out, inputs)
    assert [p.name for p in tmp_path.glob(".m1.tmp-*")]  # the killed run's hidden workspace
    warmup_sft(params, examples, out, tokenizer=_load_tok(tmp_path / "tok", params), seed=0)
    assert lineage.is_complete(out, inputs)
    assert not list(tmp_path.glob(".m1.tmp-*"))  # stale workspace cleaned up


def _load_tok(path, params):
    from psr.models import load_tokenizer

    return load_tokenizer(path, params.model)


def test_a_one_step_dpo_changes_the_model(m1, data):
    """A short run's warm-up rounds down: its only step must not train at lr 0 (it did: M2 = M1)."""
    from safetensors.torch import load_file

    assert warmup_steps(0.1, 1) == 0 and warmup_steps(0.1, 20) == 2 and warmup_steps(0.0, 5) == 0
    examples = step_dpo_examples(data.ppd, data.templates, m1.tok)
    params = data.params.replace({"dpo.max_steps": 1, "dpo.warmup_ratio": 0.1, "dpo.learning_rate": 1e-4})
    m2 = step_dpo(params, m1.dir, examples, m1.work / "m2-one-step", seed=0)
    before, after = load_file(str(m1.dir / "model.safetensors")), load_file(str(m2 / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
