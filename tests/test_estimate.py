"""`psr estimate`: a preset's generation budget follows from its sizes (pools, width, benchmarks,
repeats) and mean lengths, measured from a run where one exists; hours per backend follow from
tokens per second, and each figure says whether it was measured or cited."""

from __future__ import annotations

from pathlib import Path

import pytest

from psr.cli import main as cli_main
from psr.config import load
from psr.tools.estimate import FIGURES, Lengths, assumed_for, budget, measured_lengths

REPO = Path(__file__).resolve().parent.parent
P7 = REPO / "params" / "qwen2.5-math-7b.yaml"


def test_the_7b_budget_is_the_presets_sizes_times_the_lengths():
    p = load(P7)
    L = Lengths(prompt=100, step=50, expansions=10, distinct_judged=30, judge=200, solution=500, score=100)
    phases = {ph.name: ph for ph in budget(p, L)}
    questions = 400 + 800 + 1200
    assert phases["search candidates"].generated == questions * 10 * 6 * 50  # expansions x w x step
    assert phases["search judgments"].prompts == questions * 10 * 30
    assert phases["search judgments"].generated == questions * 10 * 30 * 200
    assert phases["SRLM solutions"].generated == questions * 4 * 500
    assert phases["SRLM scores"].generated == questions * 4 * 3 * 100
    models = 2 * 4  # both arms, M1 .. M4
    assert phases["judging (held-out pairs)"].prompts == models * 2 * 500
    assert phases["M0 judging (few-shot)"].prompts == 2 * 500  # once: M0 is every arm's
    assert phases["evaluation"].prompts == (models + 1) * (1319 + 5000 + 385 + 675 + 30 + 40)  # and M0
    assert phases["evaluation"].generated == phases["evaluation"].prompts * 500
    problems = 4 * (50 * 4 + 30 + 40)  # PSRLM's M1 .. M4 on the first 50 of each benchmark (AIME24 has 30, AMC23 40)
    assert phases["test-time search (06)"].generated == problems * (500 + 10 * (6 * 50 + 30 * 200))
    no_scaling = {ph.name for ph in budget(p.replace({"test_time.problems": 0}), L)}
    assert "test-time search (06)" not in no_scaling
    # the assumptions stay within the preset's caps
    tiny = load(REPO / "params" / "tiny.yaml")
    assert assumed_for(tiny).step == tiny.search.max_step_tokens and assumed_for(tiny).judge == 48


def test_estimate_prints_tokens_and_hours_per_phase_and_backend(capsys):
    assert cli_main(["estimate", str(P7)]) == 0
    out = capsys.readouterr().out
    assert "search judgments" in out and "evaluation" in out and "total" in out
    header = next(line for line in out.splitlines() if line.startswith("phase"))
    assert "vllm h" in header and "hf-4bit h" in header  # unmeasured backends get no column
    assert "(assumed)" in out and "cited" in out and "measured" in out
    vllm, hf = (f for f in FIGURES["7b"] if f.backend in ("vllm", "hf-4bit"))
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert float(total[-1]) / float(total[-2]) == pytest.approx(vllm.tokens_per_s / hf.tokens_per_s, rel=0.01)
    assert cli_main(["estimate", str(P7), "--tps", "hf-bf16=1000"]) == 0
    assert "hf-bf16 h" in capsys.readouterr().out


def test_lengths_are_measured_from_a_finished_run_where_it_has_them():
    run = REPO / "results" / "tiny"
    if not (run / "metrics.json").is_file():
        pytest.skip("no committed tiny run")
    p = load(REPO / "params" / "tiny.yaml")
    L = measured_lengths(run, p)
    assert {"prompt", "step", "expansions", "judge", "solution"} <= set(L.measured) and "score" not in L.measured
    assert 0 < L.step <= p.search.max_step_tokens and 0 < L.judge <= p.judge.max_new_tokens
    assert 1 <= L.expansions <= p.search.expansion_cap
