"""The synthetic answer key (local step correctness, final answers) and the answer-key scorer that
the verified control arm plugs into the step search: chosen right, rejected wrong, no judge calls,
the same tie (rollback) and unanimous rules as the self-judged search."""

from __future__ import annotations

from pathlib import Path

import pytest

from psr.answer_key import AnswerKeyScorer, SyntheticKey, task_answer_key
from psr.config import JudgeParams, SearchParams
from psr.io import read_jsonl
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.records import PPDPair, Question
from psr.search import ExpansionLog, read_expansions, step_search
from psr.tasks.synthetic import reference_next
from tests.conftest import EOS_MARK, ScriptedGenerator

Q = "Leo has 4 pens. He buys 1 more. He buys 8 more. How many pens does Leo have now?"  # 4+1=5, 5+8=13
KEY = SyntheticKey()
TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([f"Step 1: {Q} 4 + 1 = 5 \\boxed{{13}} [[A]] [[B]]"] * 5, 300)


def test_a_step_is_right_when_it_claims_what_the_reference_step_claims():
    assert KEY.step_right(Q, [], "4 + 1 = 5", final=False)
    assert KEY.step_right(Q, [], "We add: 4 + 1 = 5", final=False)  # the claim counts, not the wording
    assert not KEY.step_right(Q, [], "4 + 1 = 6", final=False)
    assert not KEY.step_right(Q, [], "4 + 8 = 12", final=False)
    assert KEY.step_right(Q, ["4 + 1 = 5", "5 + 8 = 13"], "The answer is \\boxed{13}.", final=True)
    assert not KEY.step_right(Q, ["4 + 1 = 5", "5 + 8 = 13"], "The answer is \\boxed{12}.", final=True)


def test_correctness_is_local_to_the_steps_as_written():
    # after a wrong first step, the right second step continues from its claimed result
    assert KEY.step_right(Q, ["4 + 1 = 6"], "6 + 8 = 14", final=False)
    assert not KEY.step_right(Q, ["4 + 1 = 6"], "5 + 8 = 13", final=False)


def test_a_step_that_ends_the_solution_early_or_late_is_wrong():
    assert not KEY.step_right(Q, [], "4 + 1 = 5", final=True)  # EOS after a correct equation: no answer
    assert not KEY.step_right(Q, [], "The answer is \\boxed{5}.", final=True)  # boxed before the last operation
    assert not KEY.step_right(Q, ["4 + 1 = 5", "5 + 8 = 13"], "13 + 0 = 13", final=False)


def test_steps_that_admit_no_next_step_make_every_candidate_wrong():
    assert not KEY.step_right(Q, ["4 + 1 = 5", "5 + 8 = 13", "13 + 1 = 14"], "The answer is \\boxed{14}.", final=True)
    assert not KEY.step_right(Q, ["I am not sure"], "5 + 8 = 13", final=False)


def test_solutions_are_right_by_their_last_boxed_answer():
    assert KEY.solution_right(Q, "Step 1: 4 + 1 = 5\nStep 2: 5 + 8 = 13\nStep 3: The answer is \\boxed{13}.")
    assert KEY.solution_right(Q, "Step 1: nonsense \\boxed{13}")  # only the answer is checked
    assert not KEY.solution_right(Q, "Step 1: 4 + 1 = 5\nStep 2: 5 + 8 = 13")
    assert not KEY.solution_right(Q, "Step 1: The answer is \\boxed{12}.")


def test_a_question_the_task_did_not_write_is_an_error_not_a_wrong_step():
    with pytest.raises(ValueError, match="not a synthetic question"):
        KEY.step_right("What is 2 + 2?", [], "2 + 2 = 4", final=False)


def test_only_the_synthetic_task_has_a_key():
    assert isinstance(task_answer_key("synthetic"), SyntheticKey)
    assert task_answer_key("real") is None


# ----------------------------------------------------------------------------- the verified search


def right_and_wrong(q, steps, n, seed, visit):
    """Candidate 0 is the reference next step; the others are near misses (distinct texts). The
    reference's last step is boxed; the misses of the last step end with EOS."""
    ref = reference_next(q, steps)
    k = len(steps) + 1
    final = "\\boxed" in ref
    misses = [f"{k} + {i} = {100 + i}" for i in range(1, n)]
    return [f"Step {k}: {ref}" + ("" if final else f"\nStep {k + 1}: more")] + [
        f"Step {k}: {m}" + (EOS_MARK if final else "") for m in misses]


def all_wrong(q, steps, n, seed, visit):
    return [f"Step {len(steps) + 1}: {len(steps)} + {i} = {200 + i}" for i in range(n)]


def search(tmp_path, tok, templates, policy, **kw):
    gen = ScriptedGenerator(policy=policy, judge=lambda *a: pytest.fail("the answer-key scorer judged"))
    params = SearchParams(width=3, temperature=0.5, top_p=0.95, max_step_tokens=16, max_steps=6, expansion_cap=5)
    log = ExpansionLog(tmp_path / "expansions.jsonl")
    stats = step_search([Question("q1", Q)], Policy(gen, tok, templates), params, JudgeParams(max_new_tokens=8),
                        iteration=1, seed=0, out_path=tmp_path / "ppd.jsonl", progress=False,
                        scorer=AnswerKeyScorer(KEY), on_expansion=log, **kw)
    return stats, gen


def test_the_answer_key_scorer_chooses_right_steps_over_wrong_ones_without_judging(tmp_path, tok, templates):
    stats, gen = search(tmp_path, tok, templates, right_and_wrong)
    pairs = read_jsonl(tmp_path / "ppd.jsonl", PPDPair)
    assert [p.chosen for p in pairs] == ["4 + 1 = 5", "5 + 8 = 13", "The answer is \\boxed{13}."]
    assert all(p.scores[0] == 1 and sum(p.scores) == 1 for p in pairs)
    assert all(not KEY.step_right(Q, p.previous_steps, p.rejected, p.rejected_is_final) for p in pairs)
    assert [kind for kind, _, _ in gen.calls] == ["policy"] * 3  # no judge prompt was ever decoded
    assert stats.finished == 1 and stats.counters.judge_calls == 0 and stats.counters.ties == 0
    traces = read_expansions(tmp_path / "expansions.jsonl")
    assert [t.wins for t in traces] == [[1, 0, 0]] * 3 and all(t.judgments == [] for t in traces)


def test_all_wrong_candidates_tie_and_the_search_rolls_back_as_with_the_judge(tmp_path, tok, templates):
    stats, _ = search(tmp_path, tok, templates, all_wrong)
    assert stats.pairs == 0 and stats.finished == 0
    assert stats.counters.ties == stats.counters.expansions == 5  # expansion cap
    assert [t.outcome for t in read_expansions(tmp_path / "expansions.jsonl")] == ["rollback"] * 5
