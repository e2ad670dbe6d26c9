"""What each numbered notebook does, as plain functions (the notebooks call them and display).

Each stage reads its inputs from the run layout (`psr.study.layout.Layout`), writes its outputs
there atomically, and returns a JSON-able summary that it also saves as `<stage>/summary.json`,
the file `psr.study.report` collects metrics from.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psr import lineage
from psr.engines import Generator, HFGenerator
from psr.evaluate import evaluate
from psr.io import read_json, read_jsonl, write_json
from psr.judge import judge_pairs_accuracy
from psr.models import load_policy, load_tokenizer
from psr.policy import Policy
from psr.records import EFTRecord, IFTRecord, PPDPair, Problem, Question, SRLMEFTRecord
from psr.search import step_search
from psr.serving import vllm_generator, vllm_server
from psr.srlm import load_pairs, srlm_pairs
from psr.study.context import Context
from psr.study.data import load_records, m0_tokenizer, prepare_data
from psr.tasks.benchmarks import BenchmarkItem, load_benchmark
from psr.train import solution_dpo_examples, sft_examples, srlm_sft_examples, step_dpo, step_dpo_examples, warmup_sft

SUMMARY = "summary.json"
# The preference stage (step search for PSRLM, solution scoring for SRLM) kept the id it had
# before the SRLM arm existed: folders, notebooks and resume markers are named by it.
PREFERENCE_STAGE = "02_step_search"


def _tokenizer(ctx: Context):
    return m0_tokenizer(ctx.params, ctx.layout)


def _save(ctx: Context, stage: str, summary: dict) -> dict:
    write_json(ctx.stage_dir(stage) / SUMMARY, summary)
    return summary


# ----------------------------------------------------------------------------- 01 warm-up


def warmup_stage(ctx: Context) -> dict:
    """M0 -> M1: SFT on IFT + EFT (step-pair EFT for PSRLM, solution-scoring EFT for SRLM)."""
    p, data = ctx.params, prepare_data(ctx.params, ctx.layout)
    tokenizer = _tokenizer(ctx)
    ift = load_records(data, "ift", IFTRecord)
    if ctx.arm == "psrlm":
        examples = sft_examples(ift, load_records(data, "eft", EFTRecord), ctx.templates, tokenizer)
    else:
        examples = srlm_sft_examples(ift, load_records(data, "srlm_eft", SRLMEFTRecord), ctx.templates, tokenizer)
    base = None if p.model.kind == "tiny" else p.model.name_or_path
    t0 = time.perf_counter()
    out = warmup_sft(p, examples, ctx.model_dir, base=base, tokenizer=tokenizer, seed=ctx.seed)
    manifest = read_json(Path(out) / "manifest.json")
    return _save(ctx, "01_warmup_sft", {
        "model": str(out), "examples": len(examples), "data": read_json(data / "manifest.json")["counts"],
        "train": {k: v for k, v in manifest.items() if k != "log_history"},
        "log_history": manifest.get("log_history", []), "wall_s": round(time.perf_counter() - t0, 2),
    })


# ----------------------------------------------------------------------------- generation


@contextmanager
def generator_for(ctx: Context, model_dir: Path | None = None, *, log_path: Path | None = None
                  ) -> Iterator[tuple[Generator, object]]:
    """M_k's generator and tokenizer for the length of a `with` block: HF generate in this
    process, or (`search.backend: vllm`) a vLLM server on M_k, started here and stopped when the
    block ends, so one stage is one server lifetime and each new M_k gets a fresh server.
    `log_path`: where the server's output goes (default: a temporary file)."""
    p = ctx.params
    model_dir = model_dir or ctx.model_dir
    if p.search.backend == "vllm":
        server = vllm_server(model_dir, p, log_path=log_path)  # a missing vLLM environment fails here
        tokenizer = load_tokenizer(model_dir, p.model)
        with server:
            yield vllm_generator(server, p), tokenizer
        return
    model, tokenizer = load_policy(model_dir, p.model)
    yield HFGenerator(model, tokenizer, max_tokens_per_batch=p.search.max_tokens_per_batch), tokenizer


@contextmanager
def policy_for(ctx: Context, model_dir: Path | None = None, *, log_path: Path | None = None) -> Iterator[Policy]:
    """M_k as generator, judge and scorer at once (see `psr.policy`), for a `with` block."""
    with generator_for(ctx, model_dir, log_path=log_path) as (generator, tokenizer):
        yield Policy(generator, tokenizer, ctx.templates)


SERVER_LOG = "vllm-server.log"  # in the stage's folder, when the stage generates on vLLM


def pool(ctx: Context) -> list[Question]:
    return load_records(ctx.layout.data_dir, f"pool_{ctx.k}", Question)


# ----------------------------------------------------------------------------- 02 preferences


def preference_stage(ctx: Context) -> dict:
    """Preference data of M_k: step search for PSRLM (self-judged step pairs), solution scoring
    for SRLM (self-scored whole solutions)."""
    p = ctx.params
    d = ctx.stage_dir(PREFERENCE_STAGE)
    questions = pool(ctx)
    with policy_for(ctx, log_path=d / SERVER_LOG) as policy:
        if ctx.arm == "psrlm":
            stats = step_search(
                questions, policy, p.search, p.judge,
                iteration=ctx.k, seed=ctx.seed, out_path=d / "ppd.jsonl",
            )
        else:
            stats = srlm_pairs(
                questions, policy, p.srlm,
                iteration=ctx.k, seed=ctx.seed, out_path=d / "srlm.jsonl",
            )
    return _save(ctx, PREFERENCE_STAGE, stats.to_dict())


def preference_pairs(ctx: Context) -> list:
    """M_k's preference pairs: `PPDPair`s (PSRLM) or `SolutionPair`s (SRLM)."""
    d = ctx.layout.stage_dir(ctx.arm, ctx.k, PREFERENCE_STAGE)
    if ctx.arm == "psrlm":
        return read_jsonl(d / "ppd.jsonl", PPDPair) if (d / "ppd.jsonl").exists() else []
    return load_pairs(d / "srlm.jsonl")


# ----------------------------------------------------------------------------- 03 judging


def judging_stage(ctx: Context) -> dict:
    """M_k as a pairwise step judge on held-out step pairs: accuracy, position consistency,
    parse rate (the paper's Table 3 analogue)."""
    p = ctx.params
    source = Path(p.eval.judge_pairs) if p.eval.judge_pairs else ctx.layout.data_dir / "eft_test.jsonl"
    records = read_jsonl(source, EFTRecord)
    if p.eval.judge_limit:
        records = records[: p.eval.judge_limit]
    t0 = time.perf_counter()
    with policy_for(ctx, log_path=ctx.stage_dir("03_judging") / SERVER_LOG) as policy:
        result = judge_pairs_accuracy(records, policy, p.judge)
    result = dict(result, source=str(source), wall_s=round(time.perf_counter() - t0, 2))
    return _save(ctx, "03_judging", result)


# ----------------------------------------------------------------------------- 04 DPO


def dpo_stage(ctx: Context) -> dict:
    """M_k -> M_{k+1}: step-DPO on PPD(M_k) (PSRLM) or solution DPO (SRLM)."""
    p = ctx.params
    pairs = preference_pairs(ctx)
    tokenizer = _tokenizer(ctx)
    if ctx.arm == "psrlm":
        examples = step_dpo_examples(pairs, ctx.templates, tokenizer)
    else:
        examples = solution_dpo_examples(pairs, ctx.templates, tokenizer)
    ref = ctx.layout.model_dir(ctx.arm, 1) if p.dpo.reference == "m1" else None
    out_dir = ctx.layout.model_dir(ctx.arm, ctx.k + 1)
    t0 = time.perf_counter()
    if examples:
        out = step_dpo(p, ctx.model_dir, examples, out_dir, ref_dir=ref, seed=ctx.seed)
    else:
        out = carry_over(ctx.model_dir, out_dir)
    manifest = read_json(Path(out) / "manifest.json")
    return _save(ctx, "04_step_dpo", {
        "model": str(out), "pairs": len(examples),
        "train": {k: v for k, v in manifest.items() if k != "log_history"},
        "log_history": manifest.get("log_history", []), "wall_s": round(time.perf_counter() - t0, 2),
    })


def carry_over(model_dir: Path, out_dir: Path) -> Path:
    """No preference pairs at all (every search unfinished or every score tied): M_{k+1} is M_k,
    copied with a manifest that says so, and the study goes on rather than stopping."""

    inputs = {"parent": lineage.model_identity(model_dir), "pairs": 0}
    if lineage.is_complete(out_dir, inputs):
        return out_dir
    with lineage.staging(out_dir) as tmp:
        for item in Path(model_dir).iterdir():
            if item.name != lineage.MANIFEST:
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        lineage.write_manifest(tmp, stage="carry_over", inputs=inputs, note="no preference pairs: M_k copied")
    return out_dir


# ----------------------------------------------------------------------------- 05 evaluation


def benchmark_items(ctx: Context, name: str):
    p = ctx.params
    if name == "synthetic":
        items = [BenchmarkItem(id=x.id, question=x.question, gold=x.gold)
                 for x in load_records(ctx.layout.data_dir, "test", Problem)]
        return items[: p.eval.limit] if p.eval.limit else items
    data_dir = p.eval.benchmark_dir or os.environ.get("PSR_BENCHMARK_DIR", "")
    if not data_dir:
        raise FileNotFoundError(f"benchmark {name!r} needs eval.benchmark_dir or $PSR_BENCHMARK_DIR")
    return load_benchmark(name, data_dir, limit=p.eval.limit or None)


def evaluate_stage(ctx: Context) -> dict:
    """Greedy accuracy of M_k per benchmark, with step statistics."""
    p = ctx.params
    d = ctx.stage_dir("05_evaluate")
    out = {}
    with policy_for(ctx, log_path=d / SERVER_LOG) as policy:
        for name in p.eval.benchmarks:
            summary = evaluate(
                name, benchmark_items(ctx, name), policy,
                max_new_tokens=p.eval.max_new_tokens, out_path=d / f"{name}.jsonl",
                answer_fallback=p.eval.answer_fallback, grading_timeout_s=p.eval.grading_timeout_s,
            )
            out[name] = summary.to_dict()
    return _save(ctx, "05_evaluate", out)


# ----------------------------------------------------------------------------- for display


def eft_examples(ctx: Context, n: int = 3) -> list:
    name, rtype = ("eft", EFTRecord) if ctx.arm == "psrlm" else ("srlm_eft", SRLMEFTRecord)
    return load_records(ctx.layout.data_dir, name, rtype)[:n]


def sample_solutions(ctx: Context, n: int = 3) -> list[dict]:
    """Greedy solutions of M_k for the first n test questions (a look at what the model writes)."""
    items = benchmark_items(ctx, ctx.params.eval.benchmarks[0])[:n]
    with policy_for(ctx) as policy:
        prompts = [policy.chat(ctx.templates.reasoning_prompt(it.question)) for it in items]
        outs = policy.generator.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                         max_new_tokens=ctx.params.eval.max_new_tokens, stop=None, seed=0)
    return [{"question": it.question, "gold": it.gold, "output": o[0].text} for it, o in zip(items, outs)]


def eval_samples(ctx: Context, n: int = 3) -> list[dict]:
    """The first n evaluated samples of the first benchmark, as written by evaluate_stage."""
    name = ctx.params.eval.benchmarks[0]
    path = ctx.layout.stage_dir(ctx.arm, ctx.k, "05_evaluate") / f"{name}.jsonl"
    return read_jsonl(path)[:n] if path.exists() else []
