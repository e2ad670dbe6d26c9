"""Greedy evaluation on benchmarks: per-sample JSON lines, accuracy and step statistics.

Decoding is greedy with the reasoning prompt (paper §4, Qwen2.5-Math harness defaults); the answer
is the last `\\boxed{}` and correctness is `psr.grading.is_equiv`. Samples are appended a batch at
a time, so an interrupted evaluation re-runs only what is missing and ends with the same table.

`evaluate_with_search` solves with the self-judged step search instead (test-time scaling, paper
§5.2), grades the same way, and counts what each problem cost in generated tokens; each problem's
sample is appended as soon as its search ends, so an interrupted run searches only the rest.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from psr.config import JudgeParams, SearchParams
from psr.grading import extract_answer, is_equiv
from psr.io import FLATTEN, append_jsonl, read_jsonl
from psr.policy import Policy
from psr.records import Question
from psr.search import Scorer, SearchCounters, Solved, solve_with_search
from psr.steps import StepFormatError, split_steps
from psr.tasks.benchmarks import BenchmarkItem


@dataclass
class EvalSample:
    id: str
    question: str
    output: str
    extracted: str | None
    gold: str
    correct: bool
    tokens: int
    finish_reason: str
    n_steps: int
    mean_step_tokens: float


@dataclass
class EvalSummary:
    benchmark: str
    n: int
    accuracy: float  # percent
    mean_steps: float
    mean_step_tokens: float
    mean_tokens: float
    truncated: int  # outputs cut by max_new_tokens

    def to_dict(self) -> dict:
        return asdict(self)


def grade(output: str, gold: str, *, answer_fallback: bool, timeout: float) -> tuple[str | None, bool]:
    """The answer in an output (its last `\\boxed{}`, or the fallback) and whether it equals gold."""
    extracted = extract_answer(output, fallback=answer_fallback)
    return extracted, bool(extracted is not None and is_equiv(extracted, gold, timeout=timeout))


def step_stats(output: str, tokenizer) -> tuple[int, float]:
    """Number of `Step n:` steps and their mean length in tokens (the paper's Tables 4/7/8;
    its unit is not stated, we count tokens of the policy's tokenizer)."""
    try:
        steps = split_steps(output)
    except StepFormatError:
        return 0, 0.0
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in steps]
    return len(steps), (sum(lengths) / len(lengths) if lengths else 0.0)


def evaluate(
    name: str,
    items: list[BenchmarkItem],
    policy: Policy,
    *,
    max_new_tokens: int,
    out_path: str | Path,
    batch_size: int = 64,
    answer_fallback: bool = False,
    grading_timeout_s: float = 3.0,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> EvalSummary:
    """Greedy-decode every item not yet in `out_path`, grade, append; then summarise the file.
    `on_progress(done, total)`: called at the start (items already in the file count as done)
    and after each batch."""
    out_path = Path(out_path)
    done = {s.id for s in _read(out_path)}
    todo = [it for it in items if it.id not in done]
    resumed = len(items) - len(todo)
    if on_progress:
        on_progress(resumed, len(items))
    bar = tqdm(total=len(items), initial=resumed, desc=f"eval {name}", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        prompts = [policy.chat(policy.templates.reasoning_prompt(it.question)) for it in chunk]
        outs = policy.generator.generate(
            prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, stop=None, seed=0
        )
        samples = []
        for it, (sample,) in zip(chunk, outs):
            extracted, correct = grade(sample.text, it.gold, answer_fallback=answer_fallback,
                                       timeout=grading_timeout_s)
            n_steps, mean_len = step_stats(sample.text, policy.tokenizer)
            samples.append(
                EvalSample(
                    id=it.id, question=it.question, output=sample.text, extracted=extracted, gold=it.gold,
                    correct=correct, tokens=sample.n_tokens, finish_reason=sample.finish_reason,
                    n_steps=n_steps, mean_step_tokens=round(mean_len, 3),
                )
            )
        append_jsonl(out_path, samples)
        bar.update(len(chunk))
        if on_progress:
            on_progress(resumed + start + len(chunk), len(items))
    bar.close()
    wanted = {it.id for it in items}
    return summarise(name, [s for s in _read(out_path) if s.id in wanted])


def _read(path: Path) -> list[EvalSample]:
    return read_jsonl(path, EvalSample) if path.exists() else []


def _mean(xs: list[float]) -> float:
    return round(statistics.fmean(xs), 3) if xs else 0.0


def _accuracy(samples: list) -> float:
    return round(100.0 * sum(s.correct for s in samples) / len(samples), 2) if samples else 0.0


def summarise(name: str, samples: Iterable[EvalSample]) -> EvalSummary:
    samples = list(samples)
    return EvalSummary(
        benchmark=name,
        n=len(samples),
        accuracy=_accuracy(samples),
        mean_steps=_mean([s.n_steps for s in samples]),
        mean_step_tokens=_mean([s.mean_step_tokens for s in samples if s.n_steps]),
        mean_tokens=_mean([s.tokens for s in samples]),
        truncated=sum(s.finish_reason == "length" for s in samples),
    )


# ----------------------------------------------------------------------------- test-time search


@dataclass
class SearchSample:
    """One problem solved by the step search, graded like an `EvalSample`. `tokens`: every token
    generated for it (candidate steps and judgments, the counters' two token fields)."""

    id: str
    question: str
    output: str
    extracted: str | None
    gold: str
    correct: bool
    stop: str
    n_steps: int
    tokens: int
    counters: SearchCounters = field(default_factory=SearchCounters, metadata={FLATTEN: True})


@dataclass
class SearchEvalSummary:
    """Accuracy of the search's solutions and what they cost, per problem on average."""

    benchmark: str
    n: int
    accuracy: float  # percent
    mean_tokens: float  # generated per problem: candidates + judgments
    mean_candidate_tokens: float
    mean_judge_tokens: float
    mean_expansions: float
    mean_steps: float
    finished_rate: float  # percent of problems whose search ended at a final step (not a cap)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_with_search(
    name: str,
    items: list[BenchmarkItem],
    policy: Policy,
    search: SearchParams,
    judge: JudgeParams,
    *,
    seed: int,
    out_path: str | Path,
    answer_fallback: bool = False,
    grading_timeout_s: float = 3.0,
    scorer: Scorer | None = None,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> SearchEvalSummary:
    """Solve every item not yet in `out_path` with `psr.search.solve_with_search` (the gold answer
    stays here: the search sees `Question`s), grade and append each as its search ends; then
    summarise the file. `scorer`: as in the search (default: the policy's self-judge)."""
    out_path = Path(out_path)
    done = {s.id for s in _read_searched(out_path)}
    todo = {it.id: it for it in items if it.id not in done}
    resumed = len(items) - len(todo)

    def keep(solved: Solved) -> None:
        it = todo[solved.id]
        extracted, correct = grade(solved.text, it.gold, answer_fallback=answer_fallback, timeout=grading_timeout_s)
        append_jsonl(out_path, [SearchSample(
            id=it.id, question=it.question, output=solved.text, extracted=extracted, gold=it.gold, correct=correct,
            stop=solved.stop, n_steps=solved.n_steps, tokens=solved.tokens, counters=solved.counters)])

    if on_progress:
        on_progress(resumed, len(items))
    if todo:
        solve_with_search(
            [Question(it.id, it.question) for it in todo.values()], policy, search, judge, seed,
            progress=progress, scorer=scorer, on_done=keep,
            on_progress=(lambda n, _: on_progress(resumed + n, len(items))) if on_progress else None,
        )
    wanted = {it.id for it in items}
    return summarise_search(name, [s for s in _read_searched(out_path) if s.id in wanted])


def _read_searched(path: Path) -> list[SearchSample]:
    return read_jsonl(path, SearchSample) if path.exists() else []


def summarise_search(name: str, samples: Iterable[SearchSample]) -> SearchEvalSummary:
    samples = list(samples)
    return SearchEvalSummary(
        benchmark=name,
        n=len(samples),
        accuracy=_accuracy(samples),
        mean_tokens=_mean([s.tokens for s in samples]),
        mean_candidate_tokens=_mean([s.counters.candidate_tokens for s in samples]),
        mean_judge_tokens=_mean([s.counters.judge_tokens for s in samples]),
        mean_expansions=_mean([s.counters.expansions for s in samples]),
        mean_steps=_mean([s.n_steps for s in samples]),
        finished_rate=round(100.0 * sum(s.stop == "final" for s in samples) / len(samples), 2) if samples else 0.0,
    )
