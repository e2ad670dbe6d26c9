"""The notebooks' display helpers on hand-made data: one question's search tree (from objects
shaped like `psr.search.ExpansionTrace`), SRLM's scored solutions, judged pairs, a DPO pair's
token boundary and EOS rule, right and wrong solutions side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from psr import config
from psr.models import train_tokenizer
from psr.prompts import Templates
from psr.records import EFTRecord, PPDPair, SolutionPair
from psr.study import views
from psr.train import solution_dpo_examples, step_dpo_examples

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Trace:
    """A stand-in with the fields of psr.search.ExpansionTrace (the views only read the fields)."""

    question_id: str
    previous_steps: list[str]
    candidates: list[str]
    judgments: list[tuple[int, int, str | None]] = field(default_factory=list)
    wins: list[int] = field(default_factory=list)
    chosen: int | None = None
    rejected: int | None = None
    outcome: str = "pair"


def test_search_tree_shows_candidates_wins_both_orders_and_each_outcome():
    traces = [
        Trace("q7", [], ["4 + 3 = 7", "4 + 3 = 8", "4 - 3 = 1"],
              # (slot A, slot B, verdict): candidate 1 beats both others in both orders
              [(0, 1, "A"), (1, 0, "B"), (0, 2, "A"), (2, 0, None), (1, 2, "B"), (2, 1, "A")],
              wins=[3, 0, 2], chosen=0, rejected=1, outcome="pair"),
        Trace("q7", ["4 + 3 = 7"], ["7 - 2 = 5", "7 - 2 = 4"], [(0, 1, "A"), (1, 0, "A")],
              wins=[1, 1], outcome="rollback"),
        Trace("q7", [], ["4 + 3 = 7"], wins=[0], chosen=0, outcome="unanimous"),
    ]
    md = views.search_tree(traces, "Mia has 4 apples. She buys 3 more.").data
    assert md.startswith("**q7**: Mia has 4 apples. She buys 3 more.")
    assert "#### Expansion 1: step 1, pair" in md and "#### Expansion 2: step 2, rollback" in md
    assert "| 1 | `Step 1: 4 + 3 = 7` | 3 | chosen |" in md
    assert "| 2 | `Step 1: 4 + 3 = 8` | 0 | rejected |" in md
    assert "| 3 | `Step 1: 4 - 3 = 1` | 2 |  |" in md
    # row = the candidate in slot A, column = in slot B, cell = the winner; ? = no verdict parsed
    assert "| **1** | · | 1 | 1 |" in md and "| **2** | 1 | · | 3 |" in md and "| **3** | ? | 3 | · |" in md
    assert "| **2** | 2 | · |" in md  # the tie: each wins once, in slot B and in slot A
    assert "previous step (and its pair) is dropped" in md and "no judging, no pair" in md
    assert md.endswith("3 expansions: 1 pairs, 1 rollbacks, 1 unanimous")
    # chosen/rejected given as texts are found among the candidates
    by_text = views.search_tree([Trace("q", [], ["a", "b"], wins=[2, 0], chosen="a", rejected="b")]).data
    assert "| 1 | `Step 1: a` | 2 | chosen |" in by_text and "| 2 | `Step 1: b` | 0 | rejected |" in by_text
    assert views.search_tree([]).data == "(no expansions traced)"


def test_scored_solutions_show_every_score_and_the_pair_or_the_tie():
    pair = {"id": "p1", "question": "q?", "chosen": "Step 1: right", "rejected": "Step 1: wrong",
            "chosen_score": 5.0, "rejected_score": 13 / 3, "iteration": 1}
    md = views.scored_solutions([{"id": "p1", "question": "q?", "scores": [4.3333, None, 5.0], "pair": pair},
                                 {"id": "p2", "question": "r?", "scores": [5.0, 5.0], "pair": None}]).data
    assert "scores of the 3 solutions: 4.33, –, 5.00" in md
    assert "chosen (5.00):\n```\nStep 1: right\n```" in md and "rejected (4.33):" in md
    assert "**p2**: r?" in md and "no pair: the best and the worst score tie" in md


def test_judged_pairs_split_right_from_wrong():
    rec = EFTRecord("e1", "2 + 3?", ["2 + 3"], "2 + 3 = 5", "2 + 3 = 6", "A", "[[A]]", error="arithmetic")
    rows = [
        {"record": rec, "given": "A", "swapped": "B", "given_text": "fine [[A]]", "swapped_text": "[[B]]",
         "right": [True, True]},
        {"record": rec, "given": "A", "swapped": "A", "given_text": "[[A]]", "swapped_text": "slot A [[A]]",
         "right": [True, False]},
    ]
    md = views.judged_pairs(rows).data
    right, wrong = md.split("#### judged wrong in at least one order")
    assert "#### judged right in both orders (1)" in right and "swapped: `B` ✓" in right
    assert wrong.startswith(" (1)") and "swapped: `A` ✗: slot A [[A]]" in wrong
    assert "better: `2 + 3 = 5`" in right and "(arithmetic)" in right


@pytest.fixture(scope="module")
def tiny():
    params = config.load(ROOT / "params" / "tiny.yaml")
    templates = Templates.from_params(params.prompts)
    corpus = [templates.reasoning_prompt("Mia has 4 apples. She buys 3 more.") + "\nStep 1: 4 + 3 = 7\n"
              "Step 2: The answer is \\boxed{7}."] * 20
    return templates, train_tokenizer(corpus, 200)


def test_dpo_pair_marks_the_prompt_boundary_and_eos_only_after_a_final_step(tiny):
    templates, tok = tiny
    pair = PPDPair("q#1", "Mia has 4 apples. She buys 3 more.", [], "4 + 3 = 7", "The answer is \\boxed{8}.",
                   is_final=False, scores=[2, 0], iteration=1, rejected_is_final=True)
    example = step_dpo_examples([pair], templates, tok)[0]
    md = views.dpo_pair({"pair": pair, "example": example, "tokenizer": tok, "final": (False, True)}).data
    chosen, rejected = md.split("**rejected**")
    assert "**chosen** (non-final step, " in chosen and " **‖** `S" in chosen
    assert "prefix of prompt + chosen: yes" in chosen
    assert "ends in EOS: no (as it should" in chosen and tok.eos_token not in chosen
    assert rejected.startswith(" (final step, ") and f"**`{tok.eos_token}`**" in rejected
    assert "ends in EOS: yes (as it should" in rejected
    # a non-final step that (wrongly) ends in EOS is called out
    bad = dict(example, chosen=example["chosen"].rstrip("\n") + tok.eos_token)
    assert "ends in EOS: yes (WRONG" in views.token_boundary(bad, tok, (False, True)).data


def test_dpo_pair_of_whole_solutions_and_of_no_pairs(tiny):
    templates, tok = tiny
    pair = SolutionPair("q", "Mia has 4 apples.", "Step 1: The answer is \\boxed{4}.", "Step 1: 5",
                        chosen_score=5.0, rejected_score=2.0, iteration=1)
    example = solution_dpo_examples([pair], templates, tok)[0]
    md = views.dpo_pair({"pair": pair, "example": example, "tokenizer": tok, "final": (True, True)}).data
    assert "(scores 5.00 vs 2.00)" in md and md.count("(a whole solution, ") == 2
    assert md.count("ends in EOS: yes (as it should") == 2
    assert "no preference pairs" in views.dpo_pair(None).data


def test_right_and_wrong_side_by_side_escape_the_text():
    def sample(i, correct):
        return {"id": f"t{i}", "question": f"q{i} <b>", "output": "Step 1: 1 < 2", "extracted": "2", "gold": "2",
                "correct": correct, "n_steps": 1, "tokens": 9, "finish_reason": "eos"}

    page = views.right_and_wrong([sample(0, True), sample(1, True)], [sample(2, False)]).data
    assert page.count("<tr>") == 3  # header + two rows
    rows = page.split("<tr>")[2:]
    assert "t0: q0 &lt;b&gt;" in rows[0].split("</td>")[0] and "t2" in rows[0].split("</td>")[1]
    assert "t1" in rows[1] and rows[1].count("<td") == 2 and "Step 1: 1 &lt; 2" in rows[1]
    assert "(none)" in views.right_and_wrong([], [sample(3, False)]).data


def test_the_test_time_views_put_greedy_and_search_side_by_side():
    summary = {"gsm8k": {"n": 50, "greedy": {"accuracy": 40.0, "mean_tokens": 200.0},
                         "search": {"accuracy": 46.0, "mean_tokens": 5000.0, "mean_candidate_tokens": 1200.0,
                                    "mean_judge_tokens": 3800.0, "finished_rate": 96.0}}}
    table = views.scaling_table(summary).data
    assert "| gsm8k | 50 | 40.0 | 46.0 | 200 | 5000 (1200 + 3800) | 25.0× | 96.0 |" in table

    def solved(i, how, correct):
        return {"id": f"t{i}", "question": f"q{i} <b>", "output": f"Step 1: by {how} < 2", "extracted": "2",
                "gold": "2", "correct": correct, "n_steps": 1, "tokens": 9, "stop": "final"}

    page = views.search_and_greedy([{"search": solved(0, "search", True), "greedy": solved(0, "greedy", False)}], []).data
    first = page.split("<tr>")[2].split("</td>")[0]
    assert first.count("t0: q0 &lt;b&gt;") == 1 and first.index("by search &lt; 2") < first.index("by greedy &lt; 2")
    assert "(none)" in page.split("<tr>")[2].split("</td>")[1]
