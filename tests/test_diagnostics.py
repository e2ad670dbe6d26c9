"""Pair diagnostics with the answer key: pair kinds, the self-judge's accuracy on its own
comparisons, the scorer's ranking of its own candidates, for a search and for SRLM, and when the
report computes them again."""

from __future__ import annotations

import pytest

from psr.answer_key import SyntheticKey
from psr.config import JudgeParams, SearchParams, load
from psr.diagnostics import own_scores, own_verdicts, pair_kind, pair_shares, solution_diagnostics, step_diagnostics
from psr.io import read_json, read_jsonl, write_json, write_jsonl
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.records import PPDPair, Question, SolutionPair
from psr.search import ExpansionLog, ExpansionTrace, read_expansions, step_search
from psr.srlm import ScoredSolutions
from psr.study.diagnose import VERSION, diagnose_run, diagnose_stage
from psr.study.layout import DIAGNOSTICS, EXPANSIONS, PREFERENCE_STAGE, SCORED, layout_for
from tests.conftest import ScriptedGenerator
from tests.test_answer_key import Q, TINY, right_and_wrong

KEY = SyntheticKey()
RIGHT = "Step 1: 4 + 1 = 5\nStep 2: 5 + 8 = 13\nStep 3: The answer is \\boxed{13}."
WRONG = "Step 1: 4 + 1 = 5\nStep 2: 5 + 8 = 12\nStep 3: The answer is \\boxed{12}."


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"Step 1: {Q} 4 + 1 = 5 \\boxed{{13}} [[A]] [[B]]"] * 5, 300)


def test_pair_kinds_and_their_shares():
    assert [pair_kind(True, False), pair_kind(True, True), pair_kind(False, False), pair_kind(False, True)] == [
        "right_over_wrong", "both_right", "both_wrong", "inverted"]
    assert pair_shares(["right_over_wrong"] * 3 + ["inverted"]) == {
        "n": 4, "right_over_wrong": 75.0, "both_right": 0.0, "both_wrong": 0.0, "inverted": 25.0}
    assert pair_shares([])["right_over_wrong"] is None


def trace(judgments, wins, n=3):
    return ExpansionTrace("q1", [], [f"c{i}" for i in range(n)], judgments, wins, None, None, "pair")


def test_the_judge_on_its_own_pairs_counts_ordered_comparisons_with_exactly_one_right_step():
    labels = [True, False, True]
    judged = trace([(0, 1, "A"), (1, 0, "A"), (1, 2, None), (0, 2, "B"), (2, 1, "A")], [0, 0, 0])
    # (0,1) right, (1,0) wrong, (1,2) unparsed counts as wrong, (0,2) both right: skipped, (2,1) right
    assert own_verdicts([(judged, labels)]) == {"n": 4, "accuracy": 50.0}
    assert own_verdicts([]) == {"n": 0, "accuracy": None}


def test_the_scorer_on_its_own_candidates_ranks_each_right_wrong_pair_once():
    # exactly one right: (0,1) and (0,3) right higher, (1,2) a tie, (2,3) wrong higher; (0,2) both
    # right; a candidate without a score is left out
    assert own_scores([([3, 1, 1, 2], [True, False, True, False]), ([1, None], [True, False])]) == {
        "n": 4, "accuracy": 50.0, "tied": 25.0}


def judge_for_the_wrong_step(q, prev, a, b):
    """A judge that knows which step is right and names the other one."""
    right_a = KEY.step_right(q, prev, a, final="\\boxed" in a)
    right_b = KEY.step_right(q, prev, b, final="\\boxed" in b)
    if right_a != right_b:
        return "[[B]]" if right_a else "[[A]]"
    return "[[A]]"


def test_a_search_whose_judge_prefers_wrong_steps_makes_inverted_pairs(tmp_path, tok, templates):
    log = ExpansionLog(tmp_path / "expansions.jsonl")
    search = SearchParams(width=3, temperature=0.5, top_p=0.95, max_step_tokens=16, max_steps=6, expansion_cap=6)
    step_search([Question("q1", Q)], Policy(ScriptedGenerator(right_and_wrong, judge_for_the_wrong_step), tok, templates),
                search, JudgeParams(max_new_tokens=8), iteration=1, seed=0, out_path=tmp_path / "ppd.jsonl",
                progress=False, on_expansion=log)
    pairs = read_jsonl(tmp_path / "ppd.jsonl", PPDPair)
    d = step_diagnostics(pairs, read_expansions(tmp_path / "expansions.jsonl"), {"q1": Q}, KEY)
    assert d["n"] == 3 and d["inverted"] == 100.0 and d["right_over_wrong"] == 0.0
    assert d["own_verdicts"] == {"n": 3 * 4, "accuracy": 0.0}  # 4 of the 6 ordered comparisons have one right step
    assert d["own_scores"] == {"n": 3 * 2, "accuracy": 0.0, "tied": 0.0}
    assert d["expansions"] == {"n": 3, "any_right": 100.0, "all_right": 0.0}


def test_srlm_pairs_and_scores_are_checked_by_final_answer():
    pairs = [SolutionPair("a", Q, RIGHT, WRONG, 5.0, 2.0, 1), SolutionPair("b", Q, WRONG, RIGHT, 4.0, 3.0, 1)]
    scored = [ScoredSolutions("a", [RIGHT, WRONG, WRONG], [5.0, 2.0, 5.0]), ScoredSolutions("b", [WRONG, RIGHT], [4.0, None])]
    d = solution_diagnostics(pairs, scored, {"a": Q, "b": Q}, KEY)
    assert (d["n"], d["right_over_wrong"], d["inverted"]) == (2, 50.0, 50.0)
    assert d["own_scores"] == {"n": 2, "accuracy": 50.0, "tied": 50.0}


def test_the_report_computes_diagnostics_once_per_finished_stage(tmp_path):
    params = load(TINY, [f"run.results_dir={tmp_path}", "run.iterations=1", "task.questions_per_iteration=[1]"])
    layout = layout_for(params, 0)
    write_jsonl(layout.data_dir / "pool_1.jsonl", [Question("q1", Q)])
    d = layout.stage_dir("srlm", 1, PREFERENCE_STAGE)
    d.mkdir(parents=True)
    write_jsonl(d / "srlm.jsonl", [{"id": "q1", "scores": [5.0, 2.0], "pair": vars(SolutionPair("q1", Q, RIGHT, WRONG, 5.0, 2.0, 1))}])
    write_jsonl(d / SCORED, [ScoredSolutions("q1", [RIGHT, WRONG], [5.0, 2.0])])
    assert diagnose_stage(layout, "srlm", 1, KEY) is None  # not finished: nothing to say
    write_json(layout.marker_path("srlm", 1, PREFERENCE_STAGE), {"key": "k1", "wall_s": 1.0})
    first = diagnose_stage(layout, "srlm", 1, KEY)
    assert first["right_over_wrong"] == 100.0 and first["stage_key"] == "k1" and first["version"] == VERSION
    (d / SCORED).unlink()  # the scorer files are not committed: saved diagnostics stay
    assert diagnose_stage(layout, "srlm", 1, KEY) == first
    write_json(layout.marker_path("srlm", 1, PREFERENCE_STAGE), {"key": "k2", "wall_s": 1.0})  # the stage ran again
    assert diagnose_stage(layout, "srlm", 1, KEY)["own_scores"]["n"] == 0
    # the step arms' stages have not finished here; a task without a key gets no diagnostics
    assert diagnose_run(params) == [d / DIAGNOSTICS]
    assert not (layout.stage_dir("psrlm", 1, PREFERENCE_STAGE) / EXPANSIONS).exists()
    assert read_json(d / DIAGNOSTICS)["stage_key"] == "k2"
