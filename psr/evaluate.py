"""Greedy evaluation on benchmarks: per-sample JSON lines, accuracy and step statistics.

Decoding is greedy with the reasoning prompt (paper §4, Qwen2.5-Math harness defaults); the answer
is the last `\\boxed{}` and correctness is `psr.grading.is_equiv`. Samples are appended a batch at
a time, so an interrupted evaluation re-runs only what is missing and ends with the same table.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from psr.grading import extract_answer, is_equiv
from psr.io import append_jsonl, read_jsonl
from psr.policy import Policy
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
            extracted = extract_answer(sample.text, fallback=answer_fallback)
            correct = extracted is not None and is_equiv(extracted, it.gold, timeout=grading_timeout_s)
            n_steps, mean_len = step_stats(sample.text, policy.tokenizer)
            samples.append(
                EvalSample(
                    id=it.id, question=it.question, output=sample.text, extracted=extracted, gold=it.gold,
                    correct=bool(correct), tokens=sample.n_tokens, finish_reason=sample.finish_reason,
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


def summarise(name: str, samples: Iterable[EvalSample]) -> EvalSummary:
    samples = list(samples)
    n = len(samples)

    def mean(xs: list[float]) -> float:
        return round(statistics.fmean(xs), 3) if xs else 0.0

    return EvalSummary(
        benchmark=name,
        n=n,
        accuracy=round(100.0 * sum(s.correct for s in samples) / n, 2) if n else 0.0,
        mean_steps=mean([s.n_steps for s in samples]),
        mean_step_tokens=mean([s.mean_step_tokens for s in samples if s.n_steps]),
        mean_tokens=mean([s.tokens for s in samples]),
        truncated=sum(s.finish_reason == "length" for s in samples),
    )
