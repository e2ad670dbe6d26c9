"""The verified control arm's wiring: the answer key reaches its search and no other loop, both in
what the stages hand to each search and in what the loops' modules can import."""

from __future__ import annotations

from pathlib import Path

import pytest

from psr.answer_key import AnswerKeyScorer, SyntheticKey
from psr.config import load
from psr.io import write_jsonl
from psr.policy import Policy
from psr.records import Question
from psr.search import SearchStats, SelfJudge
from psr.srlm import SRLMStats
from psr.study import stages
from psr.study.context import Context
from psr.study.layout import layout_for
from tests.test_architecture import modules, top_level_imports

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"
# the modules a self-rewarding loop runs through: search, judge, SRLM scoring, training
LOOP_MODULES = ("psr.search", "psr.judge", "psr.srlm", "psr.train")
KNOWS_ANSWERS = ("psr.answer_key", "psr.diagnostics", "psr.own_negatives", "psr.tasks")


def test_no_loop_module_can_import_an_answer_key():
    mods = modules()
    graph = {n: top_level_imports(tree, set(mods)) for n, tree in mods.items()}

    def reachable(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for t in graph.get(todo.pop(), ()):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    loops = [n for n in mods if any(n == m or n.startswith(m + ".") for m in LOOP_MODULES)]
    assert "psr.search" in loops and "psr.train.stages" in loops
    leaks = {n: sorted(t for t in reachable(n) if t.startswith(KNOWS_ANSWERS)) for n in loops}
    assert not any(leaks.values()), leaks


@pytest.fixture
def run_dir(tmp_path):
    params = load(TINY, [f"run.results_dir={tmp_path}"])
    layout = layout_for(params, 0)
    write_jsonl(layout.data_dir / "pool_1.jsonl", [Question("p1", "Leo has 4 pens. He buys 1 more. How many pens does Leo have now?")])
    return params, layout


def test_the_stages_hand_the_answer_key_to_the_verified_search_only(run_dir, monkeypatch):
    params, layout = run_dir
    handed: dict[str, dict] = {}
    keys_made: list[str] = []

    def fake_search(questions, policy, search, judge, **kw):
        handed[current] = kw
        return SearchStats()

    def fake_srlm(questions, policy, srlm, **kw):
        handed[current] = kw
        return SRLMStats(0, 0, 0, 0.0, 0.0, 0.0)

    def counting_key(kind):
        keys_made.append(current)
        return SyntheticKey()

    monkeypatch.setattr(stages, "step_search", fake_search)
    monkeypatch.setattr(stages, "srlm_pairs", fake_srlm)
    monkeypatch.setattr(stages, "task_answer_key", counting_key)
    for current in ("psrlm", "srlm", "verified"):
        ctx = Context(params=params, layout=layout, arm=current, k=1, seed=0)
        stages.preference_stage(ctx, Policy(None, None, ctx.templates))
    assert keys_made == ["verified"]
    assert isinstance(handed["psrlm"]["scorer"], SelfJudge)
    assert handed["psrlm"]["scorer"].params == params.judge
    assert isinstance(handed["verified"]["scorer"], AnswerKeyScorer)
    assert not any(isinstance(v, (AnswerKeyScorer, SyntheticKey)) for v in handed["srlm"].values())
    # both step arms keep what their scorer saw for the diagnostics; SRLM its scored solutions
    for arm in ("psrlm", "verified"):
        assert handed[arm]["on_expansion"].path == layout.stage_dir(arm, 1, stages.PREFERENCE_STAGE) / stages.EXPANSIONS
    assert callable(handed["srlm"]["on_scored"])


def test_the_verified_arm_has_no_warm_up_of_its_own(run_dir):
    params, layout = run_dir
    with pytest.raises(ValueError, match="no warm-up of its own.*psrlm/M1/model"):
        stages.warmup_stage(Context(params=params, layout=layout, arm="verified", k=1, seed=0))
