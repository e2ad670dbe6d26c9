"""Shared-prefix decoding (`psr.engines.cascade`): the same numbers as attending over each row's whole
sequence, and the same samples as the static-cache `generate` path."""

from __future__ import annotations

import pytest
import torch

from psr.engines.cascade import CascadeCache, Prefixes, prefill_pieces, cascade_attention, decode, supports_cascade
from psr.engines import HFGenerator
from psr.models import set_threads


def _reference(q, prefix_k, prefix_v, prefix_valid, suffix_k, suffix_v, suffix_valid, row_group, t):
    """Plain attention of each row over [its group's prefix ; its own suffix], causal over the t newest."""
    r, h, _, d = q.shape
    rep = h // prefix_k.shape[1]
    k = torch.cat([prefix_k[row_group], suffix_k], dim=2).repeat_interleave(rep, dim=1)
    v = torch.cat([prefix_v[row_group], suffix_v], dim=2).repeat_interleave(rep, dim=1)
    ls = suffix_k.shape[2]
    causal = torch.ones(t, ls, dtype=torch.bool).tril(ls - t)
    diag = torch.zeros_like(causal)
    diag[:, ls - t:] = torch.eye(t, dtype=torch.bool)
    suffix_mask = (suffix_valid[:, None, :] & causal[None]) | diag[None]
    mask = torch.cat([prefix_valid[row_group][:, None, :].expand(r, t, -1), suffix_mask], dim=2)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None]).transpose(1, 2)


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_cascade_attention_equals_attention_over_the_concatenation(t, heads, kv_heads):
    torch.manual_seed(0)
    d, lp, filled = 8, 7, 5
    row_group = torch.tensor([0, 0, 0, 1, 2, 2])  # group 1 has no prefix at all
    n_groups, r = 3, len(row_group)
    prefix_valid = torch.ones(n_groups, lp, dtype=torch.bool)
    prefix_valid[0, :2] = False  # left padding
    prefix_valid[1] = False
    pk, pv = torch.randn(n_groups, kv_heads, lp, d), torch.randn(n_groups, kv_heads, lp, d)
    pk, pv = pk.masked_fill(~prefix_valid[:, None, :, None], 0), pv.masked_fill(~prefix_valid[:, None, :, None], 0)
    cache = CascadeCache(Prefixes([(pk, pv)], prefix_valid, row_group), r, filled + t + 2)
    old_k, old_v = torch.randn(r, kv_heads, filled, d), torch.randn(r, kv_heads, filled, d)
    cache.suffix_k[0][:, :, :filled], cache.suffix_v[0][:, :, :filled] = old_k, old_v
    cache.suffix_valid[:, :filled] = True
    cache.suffix_valid[4, :3] = False  # a row with left-padded rest
    cache.filled = filled
    new_valid = torch.ones(r, t, dtype=torch.bool)
    if t > 1:
        new_valid[1, 0] = False
    cache.begin(new_valid)
    q, k, v = torch.randn(r, heads, t, d), torch.randn(r, kv_heads, t, d), torch.randn(r, kv_heads, t, d)
    key, value = cache.update(k, v, 0)
    out, _ = cascade_attention(None, q, key, value, None, scaling=d ** -0.5)
    ref = _reference(q, pk, pv, prefix_valid, torch.cat([old_k, k], 2), torch.cat([old_v, v], 2),
                     cache.suffix_valid[:, : filled + t], row_group, t)
    assert out.shape == (r, t, heads, d)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_decode_rejects_rows_out_of_group_order():
    with pytest.raises(ValueError, match="group order"):
        decode(None, 0, [[1], [2]], [[3], [4]], [1, 0], max_new_tokens=1, pick=None, eos_ids=[0], stop_check=None)


def _model_and_tokenizer(arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from psr.models import train_tokenizer

    set_threads(1)
    tok = train_tokenizer(["Step 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10 The answer is \\boxed{10}. Problem"] * 20, 300)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # sharper, so sampling is not decided by float noise
    return model.eval(), tok


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cascade_path_samples_what_the_static_cache_path_samples(arch):
    model, tok = _model_and_tokenizer(arch)
    assert supports_cascade(model)
    fast, static = HFGenerator(model, tok), HFGenerator(model, tok, cascade=False)
    assert fast.cascade and not static.cascade and static.share_prefixes
    base = "Problem: 2 + 3 then times 2\n"
    prompts = [base, base + "Step 1: 2 + 3 = 5\n", "x", base + "Step 1: 2 + 3 = 6\n"]  # "x" shares nothing
    for kw in (dict(n=6, temperature=0.7, top_p=0.95, max_new_tokens=12, stop="\nStep "),
               dict(n=6, temperature=0.1, top_p=0.95, max_new_tokens=12, stop="\nStep "),
               dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=12, stop=None)):
        a = fast.generate(prompts, seed=3, **kw)
        b = static.generate(prompts, seed=3, **kw)
        assert a == b
        assert {s.finish_reason for row in a for s in row} <= {"stop", "eos", "length"}
        if kw["temperature"] == 0.1:  # samples of one prompt are decoded together until they diverge
            distinct = [len({s.text for s in row}) for row in a]
            assert min(distinct) < kw["n"] and max(distinct) > 1, distinct


@pytest.mark.parametrize("compact", [1, 1000])
def test_judge_like_prompts_decode_the_same_prefilled_in_pieces(monkeypatch, compact):
    """Prompts sharing a question and then a candidate, prefilled in pieces of a few rows, with
    finished rows dropped at once or riding along: the static-cache results."""
    import psr.engines.cascade as cascade

    model, tok = _model_and_tokenizer("qwen2")
    question = "Problem: 2 + 3 then times 2 and then minus 1 more\n"
    steps = ["Step 1: 2 + 3 = 5\n", "Step 1: 2 + 3 = 6\n", "Step 1: 5\n"]
    prompts = [f"{question}A: {a}B: {b}Answer" for a in steps for b in steps if a != b] + ["x Step", "Step 2:"]
    fast, static = HFGenerator(model, tok), HFGenerator(model, tok, cascade=False)
    kw = dict(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, stop=" ", seed=0)
    want = static.generate(prompts, **kw)
    assert {s.finish_reason for row in want for s in row} == {"eos", "stop", "length"}  # rows end apart
    monkeypatch.setattr(cascade, "PREFILL_TOKENS", 40)
    monkeypatch.setattr(cascade, "COMPACT_FRACTION", compact)
    pieces = []
    monkeypatch.setattr(cascade, "prefill_pieces", lambda *a: pieces.append(prefill_pieces(*a)) or pieces[-1])
    assert fast.generate(prompts, **kw) == want
    assert max(len(p) for p in pieces) > 1  # some prefill did come in pieces


def test_prefill_pieces_stay_within_the_token_budget():
    lengths = [5, 5, 3, 9, 1, 12, 2]
    pieces = prefill_pieces(lengths, 10)
    assert [i for p in pieces for i in range(len(lengths))[p]] == list(range(len(lengths)))  # in order, once
    for p in pieces:
        rows = lengths[p]
        assert len(rows) == 1 or len(rows) * max(rows) <= 10  # a row longer than the budget goes alone
    assert [(p.start, p.stop) for p in pieces] == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    assert prefill_pieces([], 10) == []


@pytest.mark.parametrize("compact", [1, 1000])
def test_a_finished_row_riding_along_does_not_shift_the_others_logits(monkeypatch, compact):
    """Row 0 ends at once; rows 1 and 2 share a state (same prompt); each live row must still get
    its own logits while row 0's slot rides along (compact=1) or after it is dropped (1000)."""
    import psr.engines.cascade as cascade

    model, tok = _model_and_tokenizer("llama")
    eos = tok.eos_token_id
    ids = tok("Problem: 2 + 3 then times 2\nStep 1: 2 + 3 = 5", add_special_tokens=False)["input_ids"]

    def pick(logits, rows, step):
        out = logits.argmax(dim=-1)
        return torch.where((rows == 0) & (step == 0), torch.full_like(out, eos), out)

    def run():
        return decode(model, tok.pad_token_id, [ids[:4]], [ids[4:], ids[6:], ids[6:]], [0, 0, 0],
                      max_new_tokens=6, pick=pick, eos_ids=[eos], stop_check=None)

    monkeypatch.setattr(cascade, "COMPACT_FRACTION", compact)
    got = run()
    assert got[0].reason == "eos" and got[0].tokens == []
    want = [decode(model, tok.pad_token_id, [ids[:4]], [ids[6:]], [0], max_new_tokens=6,
                   pick=lambda lg, r, s: lg.argmax(dim=-1), eos_ids=[eos], stop_check=None)[0]] * 2
    assert got[1:] == want
