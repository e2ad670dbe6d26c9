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
from psr.config import shipped_m1_dir
from psr.answer_key import AnswerKeyScorer, task_answer_key
from psr.engines import Generator, HFGenerator
from psr.evaluate import evaluate, evaluate_with_search
from psr.grading import extract_answer, is_equiv
from psr.io import append_jsonl, read_json, read_jsonl, write_json, write_jsonl
from psr.judge import few_shot_examples, judge_pairs_accuracy, pair_prompts, run_judge_prompts
from psr.lineage import read_manifest
from psr.models import load_policy, load_tokenizer
from psr.own_negatives import Sampling, mix_own_negatives
from psr.policy import Policy
from psr.prompts import parse_verdict
from psr.records import EFTRecord, IFTRecord, PPDPair, Problem, Question, SRLMEFTRecord
from psr.search import ExpansionLog, Scorer, SelfJudge, step_search, trace_search
from psr.serving import vllm_generator, vllm_server
from psr.srlm import load_pairs, srlm_pairs
from psr.study.arms import searches_steps, shares_model, uses_answer_key
from psr.study.context import Context
from psr.study.data import load_records, m0_tokenizer, prepare_data
from psr.study.layout import EXPANSIONS, PREFERENCE_STAGE, SCORED, SUMMARY, TEST_TIME_STAGE
from psr.study.progress import ProgressWriter, progress_path
from psr.tasks.benchmarks import BenchmarkItem, load_benchmark
from psr.train import (shipped_m1, solution_dpo_examples, sft_examples, srlm_sft_examples, step_dpo, step_dpo_examples,
                       warmup_sft)


def _tokenizer(ctx: Context):
    return m0_tokenizer(ctx.params, ctx.layout)


def _save(ctx: Context, stage: str, summary: dict) -> dict:
    write_json(ctx.stage_dir(stage) / SUMMARY, summary)
    return summary


def _progress(ctx: Context, stage: str) -> ProgressWriter:
    """Where the stage reports how far it got, for `psr run` to show (removed when the stage ends)."""
    return ProgressWriter(progress_path(ctx.stage_dir(stage)))


def _training_callbacks(ctx: Context, progress: ProgressWriter) -> list | None:
    """Training progress for the runner; none under `accelerate launch`, whose processes a
    callback cannot reach."""
    return None if ctx.params.run.accelerate_config else [progress.training_callback("train")]


# ----------------------------------------------------------------------------- 01 warm-up


def warmup_stage(ctx: Context) -> dict:
    """M0 -> M1: SFT on IFT + EFT (step-pair EFT for PSRLM, solution-scoring EFT for SRLM). With
    `warmup.own_negatives_steps` > 0 that SFT is phase 1 (M0 -> M1a, in the stage's folder) and
    phase 2 continues from M1a on IFT + EFT with on-policy negatives (`own_negatives_phase`)."""
    if shares_model(ctx.arm, 1):
        raise ValueError(f"the {ctx.arm} arm has no warm-up of its own: its M1 is {ctx.model_dir}")
    p, data = ctx.params, prepare_data(ctx.params, ctx.layout)
    tokenizer = _tokenizer(ctx)
    ift = load_records(data, "ift", IFTRecord)
    eft = load_records(data, "eft", EFTRecord) if searches_steps(ctx.arm) else []
    if searches_steps(ctx.arm):
        examples = sft_examples(ift, eft, ctx.templates, tokenizer)
    else:
        examples = srlm_sft_examples(ift, load_records(data, "srlm_eft", SRLMEFTRecord), ctx.templates, tokenizer)
    base = None if p.model.kind == "tiny" else p.model.name_or_path
    shipped_dir = shipped_m1_dir(p)
    shipped = None if shipped_dir is None else shipped_m1(shipped_dir, ctx.seed, ctx.arm)
    two_phase = p.warmup.own_negatives_steps > 0
    first_dir = ctx.stage_dir("01_warmup_sft") / M1A if two_phase else ctx.model_dir
    t0 = time.perf_counter()
    with _progress(ctx, "01_warmup_sft") as progress:
        out = warmup_sft(p, examples, first_dir, base=base, tokenizer=tokenizer, seed=ctx.seed,
                         callbacks=_training_callbacks(ctx, progress), shipped=shipped)
    first = read_json(Path(out) / "manifest.json")
    from_shipped = shipped is not None and (read_manifest(shipped) or {}).get("digest") == first["digest"]
    phase2 = None
    if two_phase:
        phase2 = own_negatives_phase(ctx, Path(out), ift, eft, examples, tokenizer)
        out = Path(phase2["model"])
    manifest = read_json(Path(out) / "manifest.json")
    return _save(ctx, "01_warmup_sft", {
        "model": str(out), "source": f"shipped: {shipped}" if from_shipped else "trained",
        "examples": len(examples), "data": read_json(data / "manifest.json")["counts"],
        **({"phase2": phase2} if phase2 else {}),
        "train": {k: v for k, v in manifest.items() if k != "log_history"},
        "log_history": manifest.get("log_history", []), "wall_s": round(time.perf_counter() - t0, 2),
    })


M1A = "M1a"  # phase 1's model in a two-phase warm-up's stage folder
OWN_NEGATIVES = "own_negatives.jsonl"  # the on-policy EFT records phase 2 trained on, for inspection


def own_negatives_phase(ctx: Context, m1a: Path, ift: list[IFTRecord], eft: list[EFTRecord], examples: list,
                        tokenizer) -> dict:
    """Phase 2 of the warm-up, M1a -> M1: `warmup.own_negatives_steps` more SFT steps. A step arm
    trains on IFT + its EFT with `own_negatives_share` of the records' bad steps replaced by M1a's
    own wrong samples (`psr.own_negatives`; the answer key builds warm-up data here and reaches
    no loop); the SRLM arm, which has no step EFT, on its phase-1 examples (equal training length)."""
    p, w = ctx.params, ctx.params.warmup
    settings = {"steps": w.own_negatives_steps, "share": w.own_negatives_share,
                "temperature": w.own_negatives_temperature, "width": p.search.width,
                "top_p": p.search.top_p, "max_step_tokens": p.search.max_step_tokens}
    summary: dict = {"m1a": str(m1a), **settings}
    sources = None
    if searches_steps(ctx.arm) and w.own_negatives_share > 0:
        key = task_answer_key(p.task.kind)
        if key is None:
            raise ValueError(f"warmup.own_negatives_steps needs an answer key; task.kind {p.task.kind!r} has none")
        sampling = Sampling(n=p.search.width, temperature=w.own_negatives_temperature, top_p=p.search.top_p,
                            max_new_tokens=p.search.max_step_tokens)
        with policy_for(ctx, m1a) as policy:
            mixed, own = mix_own_negatives(eft, policy, key, sampling, share=w.own_negatives_share, seed=ctx.seed)
        path = ctx.stage_dir("01_warmup_sft") / OWN_NEGATIVES
        write_jsonl(path, own)
        examples = sft_examples(ift, mixed, ctx.templates, tokenizer)
        sources = {"own_negatives": path}
        summary.update(eft=len(eft), asked=round(w.own_negatives_share * len(eft)), replaced=len(own), data=str(path))
    t0 = time.perf_counter()
    with _progress(ctx, "01_warmup_sft") as progress:
        out = warmup_sft(p.replace({"warmup.max_steps": w.own_negatives_steps}), examples, ctx.model_dir,
                         base=m1a, tokenizer=tokenizer, seed=ctx.seed, sources=sources, phase2=settings,
                         callbacks=_training_callbacks(ctx, progress))
    return dict(summary, model=str(out), examples=len(examples), wall_s=round(time.perf_counter() - t0, 2))


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
    """M_k as generator, judge and scorer at once (see `psr.policy`), for a `with` block. A
    notebook opens it once for its stage and the display data it computes, so M_k is loaded (or
    served) once per stage."""
    with generator_for(ctx, model_dir, log_path=log_path) as (generator, tokenizer):
        yield Policy(generator, tokenizer, ctx.templates)


@contextmanager
def opened(ctx: Context, policy: Policy | None, stage: str) -> Iterator[Policy]:
    """`policy` when the caller opened M_k already, else M_k opened for this block."""
    if policy is not None:
        yield policy
        return
    with policy_for(ctx, log_path=ctx.stage_dir(stage) / SERVER_LOG) as fresh:
        yield fresh


SERVER_LOG = "vllm-server.log"  # in the stage's folder, when the stage generates on vLLM


def pool(ctx: Context) -> list[Question]:
    return load_records(ctx.layout.data_dir, f"pool_{ctx.k}", Question)


# ----------------------------------------------------------------------------- 02 preferences


def scorer_for(ctx: Context, policy: Policy) -> Scorer:
    """What scores the candidates of a step arm's search: M_k itself as judge (PSRLM), or the
    task's answer key (the verified control). This is the only place an answer key is handed to
    a search, and only for the arm `psr.study.arms.uses_answer_key` names."""
    if not uses_answer_key(ctx.arm):
        return SelfJudge(policy, ctx.params.judge)
    key = task_answer_key(ctx.params.task.kind)
    if key is None:
        raise ValueError(f"the {ctx.arm} arm needs an answer key; task.kind {ctx.params.task.kind!r} has none")
    return AnswerKeyScorer(key)


def preference_stage(ctx: Context, policy: Policy | None = None) -> dict:
    """PPD(M_k): the step search (PSRLM: self-judged; verified: scored by the answer key) or
    whole-solution self-scoring (SRLM). `policy`: M_k opened already by `policy_for` (else opened
    here). Beside the pairs it keeps what the scorer saw (`EXPANSIONS`, `SCORED`) for the report."""
    p = ctx.params
    d = ctx.stage_dir(PREFERENCE_STAGE)
    with opened(ctx, policy, PREFERENCE_STAGE) as policy:
        questions = pool(ctx)
        with _progress(ctx, PREFERENCE_STAGE) as progress:
            if searches_steps(ctx.arm):
                stats = step_search(
                    questions, policy, p.search, p.judge,
                    iteration=ctx.k, seed=ctx.seed, out_path=d / "ppd.jsonl",
                    on_progress=progress.begin("search", "questions"),
                    on_expansion=ExpansionLog(d / EXPANSIONS), scorer=scorer_for(ctx, policy),
                )
            else:
                stats = srlm_pairs(
                    questions, policy, p.srlm,
                    iteration=ctx.k, seed=ctx.seed, out_path=d / "srlm.jsonl",
                    on_progress=progress.begin("score", "questions"),
                    on_scored=lambda rows: append_jsonl(d / SCORED, rows),
                )
        return _save(ctx, PREFERENCE_STAGE, stats.to_dict())


def preference_pairs(ctx: Context) -> list:
    """M_k's preference pairs: `PPDPair`s (step arms) or `SolutionPair`s (SRLM)."""
    d = ctx.layout.stage_dir(ctx.arm, ctx.k, PREFERENCE_STAGE)
    if searches_steps(ctx.arm):
        return read_jsonl(d / "ppd.jsonl", PPDPair) if (d / "ppd.jsonl").exists() else []
    return load_pairs(d / "srlm.jsonl")


# ----------------------------------------------------------------------------- 03 judging


def judge_records(ctx: Context) -> tuple[Path, list[EFTRecord]]:
    """The held-out step pairs M_k is judged on, and the file they come from."""
    p = ctx.params
    source = Path(p.eval.judge_pairs) if p.eval.judge_pairs else ctx.layout.data_dir / "eft_test.jsonl"
    records = read_jsonl(source, EFTRecord)
    return source, records[: p.eval.judge_limit] if p.eval.judge_limit else records


def judge_shots(ctx: Context) -> list[EFTRecord]:
    """The worked examples shown before every pair in M_k's judge prompt: for M0, which was never
    taught the judge's format, `m0.judge_shots` EFT training records (`few_shot_examples`; the
    paper's Table 3 judges its base model few-shot); none for M1 on, whose warm-up taught it."""
    n = ctx.params.m0.judge_shots
    if ctx.k != 0 or not n:
        return []
    return few_shot_examples(load_records(ctx.layout.data_dir, "eft", EFTRecord), n)


def judging_stage(ctx: Context, policy: Policy | None = None) -> dict:
    """M_k as a pairwise step judge on held-out step pairs: accuracy, position consistency,
    parse rate (the paper's Table 3 analogue); M0 with worked examples first (`judge_shots`,
    recorded as `shots` and `shot_ids`). `policy`: see `preference_stage`."""
    p = ctx.params
    source, records = judge_records(ctx)
    shots = judge_shots(ctx)
    with opened(ctx, policy, "03_judging") as policy:
        t0 = time.perf_counter()
        with _progress(ctx, "03_judging") as progress:
            result = judge_pairs_accuracy(records, policy, p.judge, shots=shots,
                                          on_progress=progress.begin("judge", "pairs"))
        result = dict(result, source=str(source), wall_s=round(time.perf_counter() - t0, 2))
        if ctx.k == 0:
            result.update(shots=len(shots), shot_ids=[r.id for r in shots])
        return _save(ctx, "03_judging", result)


# ----------------------------------------------------------------------------- 04 DPO


def dpo_stage(ctx: Context) -> dict:
    """M_k -> M_{k+1}: step-DPO on PPD(M_k) (step arms) or solution DPO (SRLM)."""
    p = ctx.params
    pairs = preference_pairs(ctx)
    tokenizer = _tokenizer(ctx)
    if searches_steps(ctx.arm):
        examples = step_dpo_examples(pairs, ctx.templates, tokenizer)
    else:
        examples = solution_dpo_examples(pairs, ctx.templates, tokenizer)
    ref = ctx.layout.model_dir(ctx.arm, 1) if p.dpo.reference == "m1" else None
    out_dir = ctx.layout.model_dir(ctx.arm, ctx.k + 1)
    t0 = time.perf_counter()
    if examples:
        with _progress(ctx, "04_step_dpo") as progress:
            out = step_dpo(p, ctx.model_dir, examples, out_dir, ref_dir=ref, seed=ctx.seed,
                           callbacks=_training_callbacks(ctx, progress))
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


def evaluate_stage(ctx: Context, policy: Policy | None = None) -> dict:
    """Greedy accuracy of M_k per benchmark, with step statistics. `policy`: see `preference_stage`."""
    p = ctx.params
    d = ctx.stage_dir("05_evaluate")
    with opened(ctx, policy, "05_evaluate") as policy:
        out = {}
        with _progress(ctx, "05_evaluate") as progress:
            for name in p.eval.benchmarks:
                summary = evaluate(
                    name, benchmark_items(ctx, name), policy,
                    max_new_tokens=p.eval.max_new_tokens, out_path=d / f"{name}.jsonl",
                    answer_fallback=p.eval.answer_fallback, grading_timeout_s=p.eval.grading_timeout_s,
                    on_progress=progress.begin(f"eval {name}", "questions"),
                )
                out[name] = summary.to_dict()
        return _save(ctx, "05_evaluate", out)


# ----------------------------------------------------------------------------- 06 test-time scaling


def scaling_stage(ctx: Context, policy: Policy | None = None) -> dict:
    """M_k solving the first `test_time.problems` problems of each benchmark with its own
    self-judged step search (paper §5.2, Table 5), beside its greedy solutions of the same
    problems, graded alike: per benchmark `greedy` (an `EvalSummary`) and `search` (a
    `SearchEvalSummary`), each with its generated tokens per problem. The greedy half is decoded
    here rather than read from 05_evaluate, so this stage needs nothing but M_k. Both halves
    append per problem, so an interrupted stage resumes. `policy`: see `preference_stage`."""
    p = ctx.params
    d = ctx.stage_dir(TEST_TIME_STAGE)
    with opened(ctx, policy, TEST_TIME_STAGE) as policy:
        out = {}
        with _progress(ctx, TEST_TIME_STAGE) as progress:
            for name in p.eval.benchmarks:
                items = benchmark_items(ctx, name)[: p.test_time.problems]
                grading = dict(answer_fallback=p.eval.answer_fallback, grading_timeout_s=p.eval.grading_timeout_s)
                greedy = evaluate(name, items, policy, max_new_tokens=p.eval.max_new_tokens,
                                  out_path=d / f"{name}.greedy.jsonl",
                                  on_progress=progress.begin(f"greedy {name}", "problems"), **grading)
                searched = evaluate_with_search(name, items, policy, p.search, p.judge, seed=ctx.seed,
                                                out_path=d / f"{name}.search.jsonl",
                                                on_progress=progress.begin(f"search {name}", "problems"), **grading)
                out[name] = {"n": len(items), "greedy": greedy.to_dict(), "search": searched.to_dict()}
        return _save(ctx, TEST_TIME_STAGE, out)


# ----------------------------------------------------------------------------- for display
# Cheap looks at a stage's own data for its notebook: they read what the stage wrote, or decode a
# handful of prompts with the model the stage used; nothing here feeds a later stage.


def ift_examples(ctx: Context, n: int = 2) -> list[IFTRecord]:
    return load_records(ctx.layout.data_dir, "ift", IFTRecord)[:n]


def eft_examples(ctx: Context, n: int = 3) -> list:
    name, rtype = ("eft", EFTRecord) if searches_steps(ctx.arm) else ("srlm_eft", SRLMEFTRecord)
    return load_records(ctx.layout.data_dir, name, rtype)[:n]


def sample_solutions(ctx: Context, n: int = 3, policy: Policy | None = None) -> list[dict]:
    """Greedy solutions of M_k for the first n test questions (a look at what the model writes),
    graded like the evaluation grades them."""
    p = ctx.params
    items = benchmark_items(ctx, p.eval.benchmarks[0])[:n]
    with opened(ctx, policy, "01_warmup_sft") as policy:
        prompts = [policy.chat(ctx.templates.reasoning_prompt(it.question)) for it in items]
        outs = policy.generator.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                  max_new_tokens=p.eval.max_new_tokens, stop=None, seed=0)
        rows = []
        for it, o in zip(items, outs):
            answer = extract_answer(o[0].text, fallback=p.eval.answer_fallback)
            correct = answer is not None and is_equiv(answer, it.gold, timeout=p.eval.grading_timeout_s)
            rows.append({"question": it.question, "gold": it.gold, "output": o[0].text, "extracted": answer,
                         "correct": bool(correct)})
        return rows


def trace_one(ctx: Context, policy: Policy | None = None, index: int = 0) -> tuple[Question, list]:
    """One pool question's search replayed expansion by expansion (`psr.search.trace_search`, the
    stage's scorer, iteration and seed), for the notebook to show; it writes nothing."""
    with opened(ctx, policy, PREFERENCE_STAGE) as policy:
        question = pool(ctx)[index]
        p = ctx.params
        return question, trace_search(question, policy, p.search, p.judge, iteration=ctx.k, seed=ctx.seed,
                                      scorer=scorer_for(ctx, policy))


def srlm_examples(ctx: Context) -> list[dict]:
    """From the SRLM arm's srlm.jsonl: the first question whose scores gave a pair and the first
    whose scores tied (no pair), with the question's text."""
    path = ctx.layout.stage_dir(ctx.arm, ctx.k, PREFERENCE_STAGE) / "srlm.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    texts = {q.id: q.question for q in pool(ctx)}
    picked = [r for r in rows if r["pair"]][:1] + [r for r in rows if not r["pair"]][:1]
    return [dict(r, question=texts.get(r["id"], "")) for r in picked]


def judged_examples(ctx: Context, n: int = 12, policy: Policy | None = None) -> list[dict]:
    """The first n held-out pairs judged again by M_k in both orders, as the judging stage judges
    them (same prompts, greedy or as the preset says), with each verdict and whether it is right."""
    _, records = judge_records(ctx)
    records = records[:n]
    with opened(ctx, policy, "03_judging") as policy:
        prompts = pair_prompts(records, policy, judge_shots(ctx))
        samples = run_judge_prompts(prompts, policy.generator, ctx.params.judge, seed=0)
        rows = []
        for i, r in enumerate(records):
            given, swapped = parse_verdict(samples[2 * i].text), parse_verdict(samples[2 * i + 1].text)
            rows.append({
                "record": r, "given": given, "swapped": swapped,
                "given_text": samples[2 * i].text, "swapped_text": samples[2 * i + 1].text,
                "right": [given == r.verdict, swapped == ("B" if r.verdict == "A" else "A")],
            })
        return rows


def dpo_example(ctx: Context, index: int = 0) -> dict | None:
    """One preference pair of this stage as DPO sees it: the pair, its (prompt, chosen, rejected)
    example and the tokenizer that cuts them into tokens; None without pairs."""
    pairs = preference_pairs(ctx)
    if not pairs:
        return None
    pair = pairs[min(index, len(pairs) - 1)]
    tokenizer = _tokenizer(ctx)
    build = step_dpo_examples if searches_steps(ctx.arm) else solution_dpo_examples
    final = (pair.is_final, pair.rejected_is_final) if searches_steps(ctx.arm) else (True, True)
    return {"pair": pair, "example": build([pair], ctx.templates, tokenizer)[0], "tokenizer": tokenizer,
            "final": final}


def eval_samples(ctx: Context, n: int = 3) -> list[dict]:
    """The first n evaluated samples of the first benchmark, as written by evaluate_stage."""
    return eval_rows(ctx)[:n]


def eval_rows(ctx: Context, name: str | None = None) -> list[dict]:
    """Every evaluated sample of one benchmark (default: the first), as written by evaluate_stage."""
    name = name or ctx.params.eval.benchmarks[0]
    path = ctx.layout.stage_dir(ctx.arm, ctx.k, "05_evaluate") / f"{name}.jsonl"
    return read_jsonl(path) if path.exists() else []


def right_and_wrong(ctx: Context, name: str | None = None, n: int = 2) -> tuple[list[dict], list[dict]]:
    """The first n right and the first n wrong evaluated samples of a benchmark."""
    rows = eval_rows(ctx, name)
    return [r for r in rows if r["correct"]][:n], [r for r in rows if not r["correct"]][:n]


def scaling_pairs(ctx: Context, name: str | None = None) -> list[dict]:
    """Per problem of a benchmark (default: the first) that the test-time stage solved both ways:
    `greedy` and `search`, the rows it wrote for each."""
    name = name or ctx.params.eval.benchmarks[0]
    d = ctx.layout.stage_dir(ctx.arm, ctx.k, TEST_TIME_STAGE)
    rows = {half: {r["id"]: r for r in read_jsonl(d / f"{name}.{half}.jsonl")} if (d / f"{name}.{half}.jsonl").exists()
            else {} for half in ("greedy", "search")}
    return [{"greedy": g, "search": rows["search"][i]} for i, g in rows["greedy"].items() if i in rows["search"]]


def search_only_and_greedy_only(ctx: Context, name: str | None = None, n: int = 2) -> tuple[list[dict], list[dict]]:
    """The first n problems the search solved and greedy decoding did not, and the first n the
    other way round."""
    pairs = scaling_pairs(ctx, name)
    return ([x for x in pairs if x["search"]["correct"] and not x["greedy"]["correct"]][:n],
            [x for x in pairs if x["greedy"]["correct"] and not x["search"]["correct"]][:n])
