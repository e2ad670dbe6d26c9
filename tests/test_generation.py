"""The batched HF engine: per-row stop at the step boundary (generated tokens only), EOS, length
caps, n samples, seeding, and that batching/chunking/padding do not change greedy results.

A tiny model overfit for a second on one solution gives deterministic greedy text with real step
boundaries and an EOS, so stop handling is tested on a real `generate`, not on a mock."""

from __future__ import annotations

import pytest
import torch

from psr.config import ModelParams
from psr.engines import HFGenerator, Sample, cut_at_stop, derive_seed
from psr.engines.hf import StopAfterPrompt, share_groups
from psr.models import EOS, build_tiny_model, set_threads, train_tokenizer
from psr.prompts import chat_prompt
from psr.steps import STOP_STRING

SOLUTION = "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 57\nStep 3: The answer is \\boxed{57}."
QUESTION = "What is (12 + 7) * 3?"
SMALL = ModelParams(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=256)


def overfit_model(texts: list[str], steps: int = 150, seed: int = 0, lr: float = 1e-2):
    """A tiny Llama trained to reproduce `texts` (chat-formatted, each ending in EOS)."""
    set_threads(1)
    corpus = texts + [QUESTION, SOLUTION, "Which is better? [[A]] [[B]]"]
    tok = train_tokenizer(corpus * 5, 300)
    model = build_tiny_model(SMALL, tok, seed=seed)
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def trained():
    tok0 = train_tokenizer([QUESTION, SOLUTION] * 5, 300)  # only to render the chat template
    text = chat_prompt(tok0, QUESTION) + SOLUTION + EOS
    model, tok = overfit_model([text])
    assert chat_prompt(tok, QUESTION) + SOLUTION + EOS == text
    return model, tok


def greedy(gen, prompts, stop=STOP_STRING, max_new_tokens=40):
    return gen.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=stop, seed=0)


def test_stops_at_the_next_step_marker_and_drops_it(trained):
    model, tok = trained
    gen = HFGenerator(model, tok)
    [[s]] = greedy(gen, [chat_prompt(tok, QUESTION)])
    assert s.text == "Step 1: 12 + 7 = 19"
    assert s.finish_reason == "stop"
    # the stop fires on the token that completes "\nStep ", and the count includes it
    body = len(tok(s.text, add_special_tokens=False)["input_ids"])
    assert body < s.n_tokens <= body + 3


def test_prompt_ending_in_newline_does_not_stop_on_the_boundary(trained):
    """The prompt ends with "\\n" and the model writes "Step 2:": "\\nStep " spans the boundary,
    which transformers' StopStringCriteria would match; ours looks at generated tokens only."""
    model, tok = trained
    gen = HFGenerator(model, tok)
    prompt = chat_prompt(tok, QUESTION) + "Step 1: 12 + 7 = 19\n"
    [[s]] = greedy(gen, [prompt])
    assert s.text == "Step 2: 19 * 3 = 57" and s.finish_reason == "stop"
    [[last]] = greedy(gen, [prompt + "Step 2: 19 * 3 = 57\n"])
    assert last.text == "Step 3: The answer is \\boxed{57}." and last.finish_reason == "eos"
    assert last.n_tokens == len(tok(last.text, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def test_without_stop_runs_to_eos_and_length_cap_is_reported(trained):
    model, tok = trained
    gen = HFGenerator(model, tok)
    [[full]] = greedy(gen, [chat_prompt(tok, QUESTION)], stop=None, max_new_tokens=80)
    assert full.text == SOLUTION and full.finish_reason == "eos"
    [[cut]] = greedy(gen, [chat_prompt(tok, QUESTION)], stop=None, max_new_tokens=3)
    assert cut.finish_reason == "length" and cut.n_tokens == 3 and SOLUTION.startswith(cut.text)


def test_rows_stop_independently_in_one_batch(trained):
    model, tok = trained
    gen = HFGenerator(model, tok)
    base = chat_prompt(tok, QUESTION)
    prompts = [base, base + "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 57\n", base + "Step 1: 12 + 7 = 19\n"]
    out = greedy(gen, prompts)
    assert [o[0].text for o in out] == ["Step 1: 12 + 7 = 19", "Step 3: The answer is \\boxed{57}.", "Step 2: 19 * 3 = 57"]
    assert [o[0].finish_reason for o in out] == ["stop", "eos", "stop"]


def test_batching_chunking_and_padding_do_not_change_greedy_results(trained):
    model, tok = trained
    base = chat_prompt(tok, QUESTION)
    prompts = [base + "Step 1: 12 + 7 = 19\n", "x", base, base + "Step 1: 5 + 5 = 10\n", "Step"]
    alone = [greedy(HFGenerator(model, tok), [p])[0][0] for p in prompts]
    big = greedy(HFGenerator(model, tok, max_tokens_per_batch=100_000), prompts)
    tiny_chunks = greedy(HFGenerator(model, tok, max_tokens_per_batch=60), prompts)  # about one row per chunk
    assert [b[0] for b in big] == alone
    assert [b[0] for b in tiny_chunks] == alone


def test_shared_prefix_groups_skip_the_most_prefill():
    q1, q2 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 50, 60, 70, 80, 90, 100]
    a, b = [11, 12, 13, 14, 15, 16, 17, 18], [21, 22, 23, 24, 25, 26, 27, 28]
    rows = [q1 + a + [1], q1 + a + [2], q1 + b + [1], q1 + b + [2], q2 + a + [1], q2 + a + [2], [7, 7]]
    got = sorted((g.prefix, sorted(g.rows)) for g in share_groups(rows, min_prefix=4))
    # (question, slot-A candidate) groups share 18 tokens: 3 x 17 skipped tokens beat one group per
    # question (3 x 10 + 1 x 18); the unrelated row stands alone
    assert got == [(0, [6]), (18, [0, 1]), (18, [2, 3]), (18, [4, 5])]
    # with short candidates, one group per question skips more
    short = [q1 + [11, 1], q1 + [11, 2], q1 + [21, 1], q1 + [21, 2]]
    assert [(g.prefix, sorted(g.rows)) for g in share_groups(short, min_prefix=4)] == [(10, [0, 1, 2, 3])]
    # a row that is another row's prefix keeps one token of its own
    assert [(g.prefix, sorted(g.rows)) for g in share_groups([q1 + a, q1], min_prefix=4)] == [(9, [0, 1])]
    assert share_groups([[5, 5, 5]] * 3, min_prefix=1) == share_groups([[5, 5, 5]] * 3, min_prefix=1)
    [g] = share_groups([[5, 5, 5]] * 3, min_prefix=1)
    assert g.prefix == 2 and sorted(g.rows) == [0, 1, 2]  # identical rows keep one token of their own
    assert share_groups([]) == []


def test_prefix_sharing_and_static_cache_match_plain_generate(trained):
    model, tok = trained
    base = chat_prompt(tok, QUESTION)
    prompts = [base + s for s in ("", "Step 1: 12 + 7 = 19\n", "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 57\n",
                                  "Step 1: 12 + 8 = 19\n", "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 56\n")]
    plain = HFGenerator(model, tok, share_prefixes=False, static_cache=False)
    fast = HFGenerator(model, tok)
    assert fast.share_prefixes and fast.static_cache
    for stop in (STOP_STRING, None):
        assert greedy(fast, prompts, stop=stop) == greedy(plain, prompts, stop=stop)


def test_n_samples_seeding_and_greedy_copies(trained):
    model, tok = trained
    gen = HFGenerator(model, tok)
    prompts = ["Step", chat_prompt(tok, QUESTION)]
    kw = dict(n=4, temperature=1.5, top_p=1.0, max_new_tokens=12, stop=STOP_STRING)
    a = gen.generate(prompts, seed=1, **kw)
    assert [len(x) for x in a] == [4, 4] and all(isinstance(s, Sample) for x in a for s in x)
    assert gen.generate(prompts, seed=1, **kw) == a  # same seed, same samples
    assert gen.generate(prompts, seed=2, **kw) != a
    assert len({s.text for s in a[0]}) > 1  # the samples of one prompt differ
    g = gen.generate(prompts, n=3, temperature=0.0, top_p=1.0, max_new_tokens=12, stop=None, seed=5)
    assert all(len(set(x)) == 1 and len(x) == 3 for x in g)


def test_samples_do_not_depend_on_batch_companions_or_chunking(trained):
    """What makes a resumed search replay an uninterrupted one: a prompt's samples are a function
    of (its seed, the prompt, the sample index) only."""
    model, tok = trained
    q = chat_prompt(tok, QUESTION)
    kw = dict(n=4, temperature=3.0, top_p=0.95, max_new_tokens=12, stop=STOP_STRING)
    alone = HFGenerator(model, tok).generate([q], seed=7, **kw)[0]
    assert len({s.text for s in alone}) > 1  # really sampled
    crowd = HFGenerator(model, tok, max_tokens_per_batch=64).generate(["Step", q, q + "Step 1:"], seeds=[1, 7, 3], **kw, seed=0)
    assert crowd[1] == alone
    assert HFGenerator(model, tok).generate([q], seeds=[8], **kw, seed=7)[0] != alone  # per-prompt seed wins


def test_top_p_keeps_only_the_nucleus():
    from psr.engines.hf import RowSampler

    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    picks = set()
    for s in range(200):
        sampler = RowSampler([s], temperature=1.0, top_p=0.7, max_new_tokens=1)
        out = sampler(torch.zeros((1, 0), dtype=torch.long), scores.clone())
        picks.add(int(out.argmax()))
    assert picks == {0, 1}  # 0.6 + 0.3 reaches 0.7; token 2 is never drawn


def test_bad_arguments_fail_clearly(trained):
    model, tok = trained
    gen = HFGenerator(model, tok)
    with pytest.raises(ValueError, match="n must be"):
        gen.generate(["a"], n=0, temperature=0, top_p=1, max_new_tokens=4, stop=None, seed=0)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(["a"], n=1, temperature=0.5, top_p=0, max_new_tokens=4, stop=None, seed=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(["a"], n=1, temperature=0, top_p=1, max_new_tokens=0, stop=None, seed=0)
    with pytest.raises(TypeError):
        gen.generate("a", n=1, temperature=0, top_p=1, max_new_tokens=4, stop=None, seed=0)
    assert gen.generate([], n=2, temperature=0, top_p=1, max_new_tokens=4, stop=None, seed=0) == []


def test_stop_criterion_ignores_the_prompt_and_records_when_it_fired():
    tok = train_tokenizer([SOLUTION] * 5, 300)
    prompt = tok("intro\nStep ", add_special_tokens=False)["input_ids"]  # the prompt itself ends in the stop
    crit = StopAfterPrompt(tok, STOP_STRING, len(prompt), 2)
    gen1 = tok("x", add_special_tokens=False)["input_ids"]
    rows = torch.tensor([prompt + gen1, prompt + gen1])
    assert crit(rows).tolist() == [False, False]
    tail = tok("\nStep ", add_special_tokens=False)["input_ids"]
    grown = torch.tensor([prompt + gen1 + tail, prompt + gen1 + gen1 * len(tail)])
    assert crit(grown).tolist() == [True, False]
    assert crit.fired == [1 + len(tail), -1]


def test_helpers():
    assert cut_at_stop("Step 1: a\nStep 2: b", STOP_STRING) == ("Step 1: a", True)
    assert cut_at_stop("Step 1: a", STOP_STRING) == ("Step 1: a", False)
    assert cut_at_stop("a\nStep ", None) == ("a\nStep ", False)
    assert derive_seed(1, "x", 2) == derive_seed(1, "x", 2) != derive_seed(1, "x", 3)
    assert 0 <= derive_seed("anything") < 2**31


def test_prefix_sharing_matches_plain_generate_on_a_gqa_model():
    """Qwen2-style grouped-query attention, many judge prompts sharing prefixes at two levels;
    the random LM head is sharpened so that greedy choices are not decided by float noise."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from psr.config import PromptParams
    from psr.prompts import Templates

    set_threads(1)
    tok = train_tokenizer(["Step 1: 2 + 3 = 5 Which next step is better? [[A]] [[B]] Problem"] * 20, 300)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    templates = Templates.from_params(PromptParams(style="compact"))
    cands = ["2 + 3 = 5", "2 + 3 = 6", "5 * 2 = 10"]
    prompts = [chat_prompt(tok, templates.judge_prompt(f"q{k}", ["1 + 1 = 2"] * k, cands[a], cands[b]))
               for k in range(3) for a in range(3) for b in range(3) if a != b]
    fast = HFGenerator(model, tok, max_tokens_per_batch=2000)  # several chunks
    assert fast.share_prefixes
    plain = HFGenerator(model, tok, share_prefixes=False, static_cache=False)
    kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=10, stop=None, seed=0)
    assert fast.generate(prompts, **kw) == plain.generate(prompts, **kw)


def test_samples_do_not_depend_on_the_thread_count(trained):
    """psr.study.runner lets a generation stage that runs alone use every core: its samples must be
    the same as with the preset's one thread."""
    model, tok = trained
    prompts = [chat_prompt(tok, QUESTION), chat_prompt(tok, QUESTION) + "Step 1: 12 + 7 = 19\n"]
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            set_threads(threads)
            gen = HFGenerator(model, tok)
            out.append((gen.generate(prompts, n=6, temperature=0.7, top_p=0.95, max_new_tokens=24, stop=STOP_STRING, seed=5),
                        gen.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=24, stop=None, seed=5)))
        assert out[0] == out[1]
    finally:
        torch.set_num_threads(before)
