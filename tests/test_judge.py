"""Pairwise judging: every ordered pair, one batched call, win counts, unparseable verdicts,
position consistency, greedy de-duplication, and judge accuracy on held-out pairs (on the
scripted fake model of tests/conftest.py)."""

from __future__ import annotations

import pytest

from psr.config import JudgeParams
from psr.judge import (
    JudgeGroup,
    Judgment,
    count_consistent,
    few_shot_examples,
    judge_groups,
    judge_pairs_accuracy,
    ordered_pairs,
    pair_prompts,
    win_counts,
)
from psr.models import train_tokenizer
from psr.records import EFTRecord
from tests.conftest import ScriptedGenerator


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Step 1: 1 + 2 = 3 [[A]] [[B]] Which next step is better?"] * 5, 300)


GREEDY = JudgeParams(do_sample=False, max_new_tokens=16)


def bigger_wins(q, prev, a, b):
    """A judge that prefers the larger number and explains itself first."""
    va, vb = int(a.split()[-1]), int(b.split()[-1])
    return f"A says {va}, B says {vb}. " + ("[[A]]" if va > vb else "[[B]]")


def test_ordered_pairs_put_every_candidate_in_both_slots():
    pairs = ordered_pairs(6)
    assert len(pairs) == len(set(pairs)) == 30
    for i in range(6):
        assert sum(a == i for a, _ in pairs) == 5 and sum(b == i for _, b in pairs) == 5
        assert (i, i) not in pairs


def test_win_counts_over_ordered_pairs(as_policy):
    gen = ScriptedGenerator(judge=bigger_wins)
    group = JudgeGroup("q", ["1 + 1 = 2"], ["v 3", "v 1", "v 5", "v 2"])
    [res] = judge_groups([group], as_policy(gen), GREEDY)
    # each candidate beats every smaller one in both orders: wins = 2 * (number smaller)
    assert res.wins == [4, 0, 6, 2]
    assert res.n_judgments == 12 and res.n_parsed == 12 and res.n_consistent == 6
    assert sum(res.wins) == 12
    assert {(j.a, j.b) for j in res.judgments} == set(ordered_pairs(4))


def test_position_bias_gives_equal_scores_and_zero_consistency(as_policy):
    gen = ScriptedGenerator(judge=lambda *a: "[[A]]")
    [res] = judge_groups([JudgeGroup("q", [], ["a", "b", "c"])], as_policy(gen), GREEDY)
    assert res.wins == [2, 2, 2]  # the case the paper's rollback rule is for
    assert res.n_consistent == 0 and res.n_parsed == 6


def test_unparseable_verdicts_give_no_win_and_are_counted(as_policy):
    def judge(q, prev, a, b):
        return "no idea" if "bad" in (a + b) else bigger_wins(q, prev, a, b)

    gen = ScriptedGenerator(judge=judge)
    [res] = judge_groups([JudgeGroup("q", [], ["v 1", "bad 9", "v 2"])], as_policy(gen), GREEDY)
    assert res.wins == [0, 0, 2]
    assert res.n_parsed == 2 and res.n_judgments == 6
    assert [j.verdict for j in res.judgments if j.a == 1 or j.b == 1] == [None] * 4


def test_last_marker_is_the_verdict(as_policy):
    gen = ScriptedGenerator(judge=lambda q, p, a, b: "[[A]] at first, but on reflection [[B]]")
    [res] = judge_groups([JudgeGroup("q", [], ["a", "b"])], as_policy(gen), GREEDY)
    assert [j.verdict for j in res.judgments] == ["B", "B"] and res.wins == [1, 1]


def test_all_groups_are_judged_in_one_call_with_their_own_context(as_policy):
    seen = []

    def judge(q, prev, a, b):
        seen.append((q, tuple(prev)))
        return bigger_wins(q, prev, a, b)

    gen = ScriptedGenerator(judge=judge)
    groups = [
        JudgeGroup("first question", [], ["v 1", "v 2", "v 3"]),
        JudgeGroup("second question", ["2 + 2 = 4", "4 * 2 = 8"], ["v 9", "v 7"]),
    ]
    res = judge_groups(groups, as_policy(gen), GREEDY, seed=3)
    assert gen.calls == [("judge", 6 + 2, 1)]
    assert [r.wins for r in res] == [[0, 2, 4], [2, 0]]
    assert set(seen) == {("first question", ()), ("second question", ("2 + 2 = 4", "4 * 2 = 8"))}


def test_greedy_judging_decodes_identical_prompts_once(as_policy):
    gen = ScriptedGenerator(judge=bigger_wins)
    group = JudgeGroup("q", [], ["v 1", "v 1", "v 2"])  # two identical candidates
    [res] = judge_groups([group], as_policy(gen), GREEDY)
    # pairs (0,2)/(1,2) share a prompt, as do (2,0)/(2,1) and (0,1)/(1,0): 6 -> 3 distinct
    assert gen.calls == [("judge", 3, 1)]
    # (0,1) and (1,0) read the same, so "[[B]]" hands one win to each twin
    assert res.n_generated == 3 and res.wins == [1, 1, 4]
    sampled = ScriptedGenerator(judge=bigger_wins)
    judge_groups([group], as_policy(sampled), JudgeParams(do_sample=True, temperature=1.0, max_new_tokens=8))
    assert sampled.calls == [("judge", 6, 1)]  # samples stay independent


def test_consistency_counts_unordered_pairs_naming_the_same_winner():
    js = [Judgment(0, 1, "A", "", 1), Judgment(1, 0, "B", "", 1),  # 0 wins twice: consistent
          Judgment(0, 2, "A", "", 1), Judgment(2, 0, "A", "", 1),  # slot A wins twice: not
          Judgment(1, 2, None, "", 1), Judgment(2, 1, "B", "", 1)]  # one unparseable: not
    assert count_consistent(js) == 1
    assert win_counts(3, js) == [3, 1, 1]


def test_a_group_needs_two_candidates(as_policy):
    with pytest.raises(ValueError, match="2 candidates"):
        judge_groups([JudgeGroup("q", [], ["only"])], as_policy(ScriptedGenerator()), GREEDY)


def _eft(verdict: str, i: int) -> EFTRecord:
    good, bad = f"ok {i}", f"wrong {i}"
    a, b = (good, bad) if verdict == "A" else (bad, good)
    return EFTRecord(id=f"e{i}", question=f"question {i}", previous_steps=["1 + 1 = 2"] * (i % 2),
                     step_a=a, step_b=b, verdict=verdict, judgment="")


def test_judge_pairs_accuracy(as_policy):
    records = [_eft("A", 0), _eft("B", 1), _eft("A", 2), _eft("B", 3)]
    oracle = ScriptedGenerator(judge=lambda q, p, a, b: "[[A]]" if a.startswith("ok") else "[[B]]")
    r = judge_pairs_accuracy(records, as_policy(oracle), GREEDY)
    assert r == {"n": 4, "accuracy": 100.0, "position_consistency": 100.0, "parse_rate": 100.0}
    assert oracle.calls == [("judge", 8, 1)]  # both orders of every record, one call
    biased = judge_pairs_accuracy(records, as_policy(ScriptedGenerator(judge=lambda *a: "[[A]]")), GREEDY)
    assert biased["accuracy"] == 50.0 and biased["position_consistency"] == 0.0
    mute = judge_pairs_accuracy(records, as_policy(ScriptedGenerator(judge=lambda *a: "hmm")), GREEDY)
    assert mute["accuracy"] == 0.0 and mute["parse_rate"] == 0.0
    wrong = ScriptedGenerator(judge=lambda q, p, a, b: "[[B]]" if a.startswith("ok") else "[[A]]")
    assert judge_pairs_accuracy(records, as_policy(wrong), GREEDY)["accuracy"] == 0.0
    assert judge_pairs_accuracy([], as_policy(oracle), GREEDY)["accuracy"] is None
    bad = EFTRecord(id="x", question="q", previous_steps=[], step_a="a", step_b="b", verdict="C", judgment="")
    with pytest.raises(ValueError, match="verdict"):
        judge_pairs_accuracy([bad], as_policy(oracle), GREEDY)


def test_judge_pairs_accuracy_reports_progress_around_its_one_call(as_policy):
    seen = []
    records = [_eft("A", 0), _eft("B", 1), _eft("A", 2)]
    judge_pairs_accuracy(records, as_policy(ScriptedGenerator()), GREEDY, on_progress=lambda *a: seen.append(a))
    assert seen == [(0, 3), (3, 3)]


def test_few_shot_examples_take_verdicts_in_turn_in_file_order():
    records = [_eft("A", 0), _eft("A", 1), _eft("A", 2), _eft("B", 3), _eft("B", 4)]
    assert [r.id for r in few_shot_examples(records, 3)] == ["e0", "e3", "e1"]
    assert [r.id for r in few_shot_examples(records, 9)] == ["e0", "e3", "e1", "e4", "e2"]  # all there are
    assert [r.id for r in few_shot_examples(records[3:], 2)] == ["e3", "e4"]  # one verdict only: file order
    assert few_shot_examples(records, 0) == [] and few_shot_examples([], 3) == []


def test_a_few_shot_judge_sees_the_worked_examples_and_is_scored_on_the_pair_after_them(as_policy):
    records = [_eft("A", 0), _eft("B", 1), _eft("A", 2), _eft("B", 3)]
    shots = [EFTRecord(id=f"s{i}", question=f"shot {i}", previous_steps=[], step_a=f"ok s{i}", step_b=f"wrong s{i}",
                       verdict="A", judgment=f"worked judgment {i} [[A]]") for i in range(2)]
    oracle = ScriptedGenerator(judge=lambda q, p, a, b: "[[A]]" if a.startswith("ok") else "[[B]]")
    r = judge_pairs_accuracy(records, as_policy(oracle), GREEDY, shots=shots)
    assert r == {"n": 4, "accuracy": 100.0, "position_consistency": 100.0, "parse_rate": 100.0}
    assert len(oracle.prompts) == 8 and all(f"worked judgment {i} [[A]]" in p for p in oracle.prompts for i in (0, 1))
    # without shots the prompts are the plain judge prompts M1 on are judged with
    policy = as_policy(ScriptedGenerator())
    t = policy.templates
    assert pair_prompts(records[:1], policy) == [
        policy.chat(t.judge_prompt("question 0", [], "ok 0", "wrong 0")),
        policy.chat(t.judge_prompt("question 0", [], "wrong 0", "ok 0"))]
