"""Test-time scaling (paper §5.2, Table 5): the self-judged step search as a way to solve test
problems, graded like greedy evaluation, with what each problem cost in generated tokens; kept per
problem, so an interrupted stage resumes and ends where an uninterrupted one does (on the scripted
fake model of tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from psr.config import JudgeParams, SearchParams, load
from psr.evaluate import SearchSample, evaluate_with_search
from psr.io import read_jsonl, write_jsonl
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.records import Problem, Question
from psr.search import Solved, solve_with_search
from psr.study import stages
from psr.study.context import Context
from psr.study.layout import TEST_TIME_STAGE, layout_for
from psr.tasks.benchmarks import BenchmarkItem
from tests.conftest import EOS_MARK, Crash, ScriptedGenerator

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"
GREEDY = JudgeParams(do_sample=False, max_new_tokens=16)
SEARCH = SearchParams(width=3, temperature=0.5, top_p=0.95, max_step_tokens=16, max_steps=10, expansion_cap=20)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Step 1: good 1 bad 2 \\boxed{3} [[A]] [[B]] climb"] * 5, 300)


def ladder(q, steps, n, seed, visit):
    """"climb T": at step k one good candidate ("good k", boxed k at k == T) and n-1 bad ones
    (at k == T they end the solution unboxed). Greedy decoding (n = 1) runs on past the step."""
    target, k = int(q.split()[-1]), len(steps) + 1
    texts = []
    for i in range(n):
        body = f"good {k}" + (f" \\boxed{{{k}}}" if k == target else "") if i == 0 else f"bad {k}.{i}.{seed % 89}"
        tail = EOS_MARK if (k == target and i > 0) else f"\nStep {k + 1}: ignored"
        texts.append(f"Step {k}: {body}{tail}")
    return texts


def good_first(q, prev, a, b):
    if ("good" in a) != ("good" in b):
        return "So [[A]]" if "good" in a else "So [[B]]"
    return "[[A]]" if a < b else "[[B]]"


def items(*targets: int) -> list[BenchmarkItem]:
    """Problems "climb T" whose gold is T, except T = 3, whose gold no solution reaches."""
    return [BenchmarkItem(id=f"c{t}", question=f"climb {t}", gold="99" if t == 3 else str(t)) for t in targets]


def solve(tmp_path, tok, templates, gen, name="search.jsonl", targets=(1, 2, 3, 4), **kw):
    policy = Policy(gen, tok, templates)
    return evaluate_with_search("toy", items(*targets), policy, SEARCH, GREEDY, seed=7, out_path=tmp_path / name,
                                progress=False, **kw)


def test_the_search_hands_each_question_on_as_it_ends_with_what_it_spent(tok, templates):
    seen: list[Solved] = []
    texts = solve_with_search([Question("c2", "climb 2"), Question("c1", "climb 1")],
                              Policy(ScriptedGenerator(policy=ladder, judge=good_first), tok, templates),
                              SEARCH, GREEDY, seed=7, progress=False, on_done=seen.append)
    assert [s.id for s in seen] == ["c1", "c2"]  # in the order they end
    assert [s.text for s in reversed(seen)] == texts and texts[0] == "Step 1: good 1\nStep 2: good 2 \\boxed{2}"
    assert all(s.finished and s.stop == "final" for s in seen) and [s.n_steps for s in seen] == [1, 2]
    c2 = seen[1].counters
    assert c2.expansions == 2 and c2.candidate_tokens > 0 and c2.judge_tokens > 0
    assert seen[1].tokens == c2.candidate_tokens + c2.judge_tokens


def test_search_solutions_are_graded_like_greedy_ones_and_cost_counted(tmp_path, tok, templates):
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    summary = solve(tmp_path, tok, templates, gen)
    rows = {r.id: r for r in read_jsonl(tmp_path / "search.jsonl", SearchSample)}
    assert set(rows) == {"c1", "c2", "c3", "c4"}
    assert rows["c4"].extracted == "4" and rows["c4"].correct and not rows["c3"].correct  # its gold is 99
    assert summary.n == 4 and summary.accuracy == 75.0 and summary.finished_rate == 100.0
    assert rows["c4"].tokens == rows["c4"].counters.candidate_tokens + rows["c4"].counters.judge_tokens > 0
    assert summary.mean_tokens == pytest.approx(sum(r.tokens for r in rows.values()) / 4)
    assert summary.mean_tokens == pytest.approx(summary.mean_candidate_tokens + summary.mean_judge_tokens)
    assert not any("99" in p for p in gen.prompts)  # a gold answer never reaches the search


@pytest.mark.parametrize("crash_at", [2, 3, 5, 6])
def test_an_interrupted_search_resumes_and_ends_as_an_uninterrupted_one(tmp_path, tok, templates, crash_at):
    full = solve(tmp_path, tok, templates, ScriptedGenerator(policy=ladder, judge=good_first), name="full.jsonl")
    with pytest.raises(Crash):
        solve(tmp_path, tok, templates, ScriptedGenerator(policy=ladder, judge=good_first, fail_after=crash_at))
    kept = {r["id"] for r in read_jsonl(tmp_path / "search.jsonl")} if (tmp_path / "search.jsonl").exists() else set()
    assert len(kept) == (crash_at - 1) // 2  # one question ends per finished round (a generate and a judge call)
    seen = []
    again = solve(tmp_path, tok, templates, ScriptedGenerator(policy=ladder, judge=good_first),
                  on_progress=lambda *a: seen.append(a))
    assert again == full and seen[0] == (len(kept), 4) and seen[-1] == (4, 4)

    def by_id(name):
        return sorted(read_jsonl(tmp_path / name), key=lambda r: r["id"])

    assert by_id("search.jsonl") == by_id("full.jsonl")  # every row as the uninterrupted run wrote it, once
    idle = ScriptedGenerator(policy=ladder, judge=good_first)
    assert solve(tmp_path, tok, templates, idle) == full and idle.calls == []  # nothing left to search


# ----------------------------------------------------------------------------- the stage


def stage_context(tmp_path, problems: int) -> Context:
    params = load(TINY, [f"run.results_dir={tmp_path}", "run.name=r", f"test_time.problems={problems}",
                         "search.width=3", "search.max_step_tokens=16"])
    layout = layout_for(params, 0)
    write_jsonl(layout.data_dir / "test.jsonl",
                [Problem(id=f"c{t}", question=f"climb {t}", gold=str(t)) for t in (1, 2, 4, 3, 5)])
    return Context(params=params, layout=layout, arm="psrlm", k=2, seed=0)


def test_the_stage_compares_greedy_and_search_on_the_first_problems_and_resumes(tmp_path, tok, templates):
    whole = stages.scaling_stage(stage_context(tmp_path / "a", 4),
                                 Policy(ScriptedGenerator(policy=ladder, judge=good_first), tok, templates))
    t = whole["synthetic"]
    assert t["n"] == t["greedy"]["n"] == t["search"]["n"] == 4  # c1 c2 c4 c3, not c5
    assert t["greedy"]["accuracy"] == 25.0  # greedy runs past the step: only "climb 1" ends boxed
    assert t["search"]["accuracy"] == 100.0 and t["search"]["mean_tokens"] > 0 and t["greedy"]["mean_tokens"] > 0
    ctx = stage_context(tmp_path / "b", 4)
    with pytest.raises(Crash):
        stages.scaling_stage(ctx, Policy(ScriptedGenerator(policy=ladder, judge=good_first, fail_after=5), tok,
                                         templates))
    d = ctx.layout.stage_dir("psrlm", 2, TEST_TIME_STAGE)
    assert len(read_jsonl(d / "synthetic.greedy.jsonl")) == 4 and len(read_jsonl(d / "synthetic.search.jsonl")) == 1
    assert stages.scaling_stage(ctx, Policy(ScriptedGenerator(policy=ladder, judge=good_first), tok, templates)) == whole
    search_only, greedy_only = stages.search_only_and_greedy_only(ctx)
    assert {x["search"]["id"] for x in search_only} == {"c2", "c4"} and greedy_only == []  # the first two of three
