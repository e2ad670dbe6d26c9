"""What each numbered notebook does, as plain functions (the notebooks only call and display).

Each stage reads its inputs from the run layout (`psr.pipeline.Layout`), writes its outputs
there atomically, and returns a JSON-able summary that it also saves as `<stage>/summary.json`,
the file `psr.report` collects metrics from.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from psr.io import read_json, read_jsonl, write_json
from psr.pipeline import Context, Layout
from psr.records import Question

SUMMARY = "summary.json"


# ----------------------------------------------------------------------------- data


def prepare_data(params, layout: Layout, log=print) -> Path:
    """Task files (+ the tiny model's tokenizer) for one seed, shared by both arms. Built into a
    temporary folder and renamed into place, so a folder that exists is complete."""
    data_dir = layout.data_dir
    digest = params.digest("task", "model", "prompts")
    manifest = data_dir / "manifest.json"
    if manifest.exists() and read_json(manifest).get("digest") == digest:
        return data_dir
    t0 = time.perf_counter()
    tmp = data_dir.with_name(f".{data_dir.name}.building")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from psr.prompts import Templates
    from psr.tasks.synthetic import write_task

    templates = Templates.for_params(params)
    task = build_task(params, layout.seed)
    write_task(task, tmp)
    if params.model.kind == "tiny":
        from psr.models import train_tokenizer
        from psr.tasks.synthetic import corpus

        train_tokenizer(corpus(task, templates), params.model.vocab_size, tmp / "tokenizer")
    counts = {name: len(getattr(task, name)) for name in ("ift", "eft", "eft_test", "test", "srlm_eft")}
    counts["pools"] = [len(p) for p in task.pools]
    write_json(tmp / "manifest.json", {"digest": digest, "seed": layout.seed, "counts": counts,
                                       "wall_s": round(time.perf_counter() - t0, 2)})
    if data_dir.exists():
        import shutil

        shutil.rmtree(data_dir)
    os.replace(tmp, data_dir)
    log(f"[seed {layout.seed}] data ready in {data_dir} ({time.perf_counter() - t0:.1f}s): {counts}")
    return data_dir


def build_task(params, seed: int):
    if params.task.kind == "synthetic":
        from psr.tasks.synthetic import build_task as build_synthetic

        return build_synthetic(params.task, seed)
    from psr.tasks.real import build_real_task

    return build_real_task(params, seed)


def load_records(data_dir: Path, name: str, record_type):
    return read_jsonl(Path(data_dir) / f"{name}.jsonl", record_type)


def _tokenizer(ctx: Context):
    """The M0 tokenizer: trained with the data (tiny) or the pretrained model's own."""
    from psr.models import load_tokenizer

    p = ctx.params
    source = ctx.layout.data_dir / "tokenizer" if p.model.kind == "tiny" else p.model.name_or_path
    return load_tokenizer(source, p.model)


def _save(ctx: Context, stage: str, summary: dict) -> dict:
    write_json(ctx.stage_dir(stage) / SUMMARY, summary)
    return summary


# ----------------------------------------------------------------------------- 01 warm-up


def warmup_stage(ctx: Context) -> dict:
    """M0 -> M1: SFT on IFT + EFT (step-pair EFT for PSRLM, solution-scoring EFT for SRLM)."""
    from psr.records import EFTRecord, IFTRecord, SRLMEFTRecord
    from psr.train import sft_examples, srlm_sft_examples, warmup_sft

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


def generator_for(ctx: Context, model_dir: Path | None = None):
    """The batched sampling backend over M_k (HF generate; vLLM when the preset asks)."""
    from psr.models import load_policy

    p = ctx.params
    model_dir = model_dir or ctx.model_dir
    if p.search.backend == "vllm":
        from psr.generation import VLLMGenerator

        return VLLMGenerator.from_model_dir(model_dir, p), _tokenizer(ctx)
    from psr.generation import HFGenerator

    model, tokenizer = load_policy(model_dir, p.model)
    return HFGenerator(model, tokenizer, max_tokens_per_batch=p.search.max_tokens_per_batch), tokenizer


def pool(ctx: Context) -> list[Question]:
    return load_records(ctx.layout.data_dir, f"pool_{ctx.k}", Question)


# ----------------------------------------------------------------------------- 02 preferences


def preference_stage(ctx: Context) -> dict:
    """PPD(M_k): the self-judged step search (PSRLM) or whole-solution self-scoring (SRLM)."""
    p = ctx.params
    d = ctx.stage_dir("02_step_search")
    generator, tokenizer = generator_for(ctx)
    questions = pool(ctx)
    if ctx.arm == "psrlm":
        from psr.search import step_search

        stats = step_search(
            questions, generator, ctx.templates, tokenizer, p.search, p.judge,
            iteration=ctx.k, seed=ctx.seed, out_path=d / "ppd.jsonl",
        )
    else:
        from psr.srlm import srlm_pairs

        stats = srlm_pairs(
            questions, generator, ctx.templates, tokenizer, p.srlm,
            iteration=ctx.k, seed=ctx.seed, out_path=d / "srlm.jsonl",
        )
    return _save(ctx, "02_step_search", stats.to_dict())


def preference_pairs(ctx: Context) -> list:
    d = ctx.layout.stage_dir(ctx.arm, ctx.k, "02_step_search")
    if ctx.arm == "psrlm":
        from psr.records import PPDPair

        return read_jsonl(d / "ppd.jsonl", PPDPair) if (d / "ppd.jsonl").exists() else []
    from psr.srlm import load_pairs

    return load_pairs(d / "srlm.jsonl")


# ----------------------------------------------------------------------------- 03 judging


def judging_stage(ctx: Context) -> dict:
    """M_k as a pairwise step judge on held-out step pairs: accuracy, position consistency,
    parse rate (the paper's Table 3 analogue)."""
    from psr.judge import judge_pairs_accuracy
    from psr.records import EFTRecord

    p = ctx.params
    source = Path(p.eval.judge_pairs) if p.eval.judge_pairs else ctx.layout.data_dir / "eft_test.jsonl"
    records = read_jsonl(source, EFTRecord)
    if p.eval.judge_limit:
        records = records[: p.eval.judge_limit]
    generator, tokenizer = generator_for(ctx)
    t0 = time.perf_counter()
    result = judge_pairs_accuracy(records, generator, ctx.templates, tokenizer, p.judge)
    result = dict(result, source=str(source), wall_s=round(time.perf_counter() - t0, 2))
    return _save(ctx, "03_judging", result)


# ----------------------------------------------------------------------------- 04 DPO


def dpo_stage(ctx: Context) -> dict:
    """M_k -> M_{k+1}: step-DPO on PPD(M_k) (PSRLM) or solution DPO (SRLM)."""
    from psr.train import solution_dpo_examples, step_dpo, step_dpo_examples

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
    import shutil

    from psr import lineage

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
    from psr.tasks.benchmarks import BenchmarkItem, load_benchmark

    p = ctx.params
    if name == "synthetic":
        from psr.records import Problem

        items = [BenchmarkItem(id=x.id, question=x.question, gold=x.gold)
                 for x in load_records(ctx.layout.data_dir, "test", Problem)]
        return items[: p.eval.limit] if p.eval.limit else items
    data_dir = p.eval.benchmark_dir or os.environ.get("PSR_BENCHMARK_DIR", "")
    if not data_dir:
        raise FileNotFoundError(f"benchmark {name!r} needs eval.benchmark_dir or $PSR_BENCHMARK_DIR")
    return load_benchmark(name, data_dir, limit=p.eval.limit or None)


def evaluate_stage(ctx: Context) -> dict:
    """Greedy accuracy of M_k per benchmark, with step statistics."""
    from psr.evaluate import evaluate

    p = ctx.params
    d = ctx.stage_dir("05_evaluate")
    generator, tokenizer = generator_for(ctx)
    out = {}
    for name in p.eval.benchmarks:
        summary = evaluate(
            name, benchmark_items(ctx, name), generator, ctx.templates, tokenizer,
            max_new_tokens=p.eval.max_new_tokens, out_path=d / f"{name}.jsonl",
            answer_fallback=p.eval.answer_fallback, grading_timeout_s=p.eval.grading_timeout_s,
        )
        out[name] = summary.to_dict()
    return _save(ctx, "05_evaluate", out)


# ----------------------------------------------------------------------------- for display


def eft_examples(ctx: Context, n: int = 3) -> list:
    from psr.records import EFTRecord, SRLMEFTRecord

    name, rtype = ("eft", EFTRecord) if ctx.arm == "psrlm" else ("srlm_eft", SRLMEFTRecord)
    return load_records(ctx.layout.data_dir, name, rtype)[:n]


def sample_solutions(ctx: Context, n: int = 3) -> list[dict]:
    """Greedy solutions of M_k for the first n test questions (a look at what the model writes)."""
    from psr.prompts import chat_prompt

    items = benchmark_items(ctx, ctx.params.eval.benchmarks[0])[:n]
    generator, tokenizer = generator_for(ctx)
    prompts = [chat_prompt(tokenizer, ctx.templates.reasoning_prompt(it.question)) for it in items]
    outs = generator.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                              max_new_tokens=ctx.params.eval.max_new_tokens, stop=None, seed=0)
    return [{"question": it.question, "gold": it.gold, "output": o[0].text} for it, o in zip(items, outs)]


def eval_samples(ctx: Context, n: int = 3) -> list[dict]:
    """The first n evaluated samples of the first benchmark, as written by evaluate_stage."""
    name = ctx.params.eval.benchmarks[0]
    path = ctx.layout.stage_dir(ctx.arm, ctx.k, "05_evaluate") / f"{name}.jsonl"
    return read_jsonl(path)[:n] if path.exists() else []
