"""Evaluation: per-sample file, accuracy table, resume without redoing finished samples."""

from __future__ import annotations

import pytest

from psr.config import PromptParams
from psr.evaluate import evaluate, step_stats
from psr.io import read_jsonl
from psr.engines import Sample
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.prompts import Templates
from psr.tasks.benchmarks import BenchmarkItem


class ScriptedSolver:
    """A deterministic stand-in for the policy: answers 'What is a+b?' right when a is even."""

    def __init__(self, fail_after_calls: int | None = None):
        self.prompts: list[str] = []
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seed, seeds=None):
        assert temperature == 0.0  # evaluation is greedy
        self.calls += 1
        if self.fail_after_calls is not None and self.calls > self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        out = []
        for p in prompts:
            self.prompts.append(p)
            a, b = (int(x) for x in p.split("What is ")[1].split("?")[0].split("+"))
            ans = a + b if a % 2 == 0 else a + b + 1
            text = f"Step 1: {a} + {b} = {ans}\nStep 2: The answer is \\boxed{{{ans}}}."
            out.append([Sample(text, 20, "eos")] * n)
        return out


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Step 1: 2 + 3 = 5\nStep 2: The answer is \\boxed{5}."] * 10, 300)


ITEMS = [BenchmarkItem(id=f"q{i}", question=f"What is {i}+{i + 1}?", gold=str(2 * i + 1)) for i in range(10)]


def run(tmp_path, tok, gen, batch_size=3, **kw):
    policy = Policy(gen, tok, Templates.from_params(PromptParams(style="compact")))
    return evaluate("toy", ITEMS, policy, max_new_tokens=32, out_path=tmp_path / "toy.jsonl",
                    batch_size=batch_size, progress=False, **kw)


def test_writes_per_sample_records_and_the_table(tmp_path, tok):
    summary = run(tmp_path, tok, ScriptedSolver())
    assert summary.n == 10 and summary.accuracy == 50.0 and summary.mean_steps == 2.0
    rows = read_jsonl(tmp_path / "toy.jsonl")
    assert {r["id"] for r in rows} == {it.id for it in ITEMS}
    first = next(r for r in rows if r["id"] == "q0")
    assert first["extracted"] == "1" and first["gold"] == "1" and first["correct"] is True
    assert first["n_steps"] == 2 and first["mean_step_tokens"] > 0 and first["tokens"] == 20


def test_interrupted_evaluation_resumes_without_redoing_samples(tmp_path, tok):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tok, ScriptedSolver(fail_after_calls=2))
    done = len((tmp_path / "toy.jsonl").read_text().splitlines())
    assert done == 6  # two batches of three were written before the interruption
    second = ScriptedSolver()
    summary = run(tmp_path, tok, second)
    assert len(second.prompts) == 10 - done  # only the missing samples were decoded
    (tmp_path / "fresh").mkdir()
    assert summary == run(tmp_path / "fresh", tok, ScriptedSolver())  # same table as an uninterrupted run


def test_progress_counts_items_per_batch_and_resumed_ones_at_the_start(tmp_path, tok):
    seen = []
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tok, ScriptedSolver(fail_after_calls=1), on_progress=lambda *a: seen.append(a))
    assert seen == [(0, 10), (3, 10)]
    seen.clear()
    run(tmp_path, tok, ScriptedSolver(), batch_size=4, on_progress=lambda *a: seen.append(a))
    assert seen == [(3, 10), (7, 10), (10, 10)]


def test_step_stats_of_unstructured_output(tok):
    assert step_stats("no steps here", tok) == (0, 0.0)
    n, mean = step_stats("Step 1: a\nStep 2: b c", tok)
    assert n == 2 and mean > 0
