"""SRLM preference data: N whole solutions per question scored by the same model, best against
worst mean score, equal scores give no pair, resume without redoing questions, progress."""

from __future__ import annotations

import re

import pytest

from psr.config import SRLMParams
from psr.engines import Sample
from psr.io import write_jsonl
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.records import Question
from psr.srlm import load_pairs, read_scored, srlm_pairs

PARAMS = SRLMParams(n_candidates=3, n_score_repeats=2, max_new_tokens=8, score_max_new_tokens=8)


class ScoringModel:
    """Solution j of a question reads "answer j" ("answer 1" every time for a question about a
    tie); scoring "answer j" gives `Score: j + 1`, so higher j is better."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seed, seeds=None):
        self.calls.append((len(prompts), n))
        out = []
        for p in prompts:
            scored = re.search(r"<response>answer (\d+)</response>", p)
            if scored:
                out.append([Sample(f"Fine. Score: {int(scored.group(1)) + 1}", 4, "eos")] * n)
            else:
                out.append([Sample(f"answer {1 if 'tie' in p else j}", 2, "eos") for j in range(n)])
        return out


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Score: 5 answer 1 <response>"] * 5, 300)


def questions(n: int) -> list[Question]:
    return [Question(f"q{i}", f"question {i}" + (" tie" if i == 1 else "")) for i in range(n)]


def test_best_and_worst_mean_scores_make_the_pair_and_ties_make_none(tmp_path, tok, templates):
    model = ScoringModel()
    stats = srlm_pairs(questions(3), Policy(model, tok, templates), PARAMS, iteration=1, seed=0,
                       out_path=tmp_path / "srlm.jsonl", progress=False)
    assert (stats.questions, stats.pairs, stats.ties, stats.score_parse_rate) == (3, 2, 1, 100.0)
    pairs = load_pairs(tmp_path / "srlm.jsonl")
    assert [(p.id, p.chosen, p.rejected, p.chosen_score, p.rejected_score) for p in pairs] == [
        ("q0", "answer 2", "answer 0", 3.0, 1.0), ("q2", "answer 2", "answer 0", 3.0, 1.0)]
    assert model.calls == [(3, 3), (9, 2)]  # solutions of the chunk, then every solution scored


def test_progress_per_chunk_and_resume_without_redoing_questions(tmp_path, tok, templates):
    seen = []
    policy = Policy(ScoringModel(), tok, templates)
    srlm_pairs(questions(3), policy, PARAMS, iteration=1, seed=0, out_path=tmp_path / "srlm.jsonl",
               chunk_size=2, progress=False, on_progress=lambda *a: seen.append(a))
    assert seen == [(0, 3), (2, 3), (3, 3)]
    seen.clear()
    again = ScoringModel()
    stats = srlm_pairs(questions(5), Policy(again, tok, templates), PARAMS, iteration=1, seed=0,
                       out_path=tmp_path / "srlm.jsonl", chunk_size=2, progress=False,
                       on_progress=lambda *a: seen.append(a))
    assert seen == [(3, 5), (5, 5)] and again.calls == [(2, 3), (6, 2)]  # only q3 and q4
    assert stats.questions == 5 and stats.pairs == 4


def test_every_scored_solution_is_reported_for_analysis_once_per_question(tmp_path, tok, templates):
    path = tmp_path / "scored.jsonl"
    rows = []
    srlm_pairs(questions(3), Policy(ScoringModel(), tok, templates), PARAMS, iteration=1, seed=0,
               out_path=tmp_path / "srlm.jsonl", chunk_size=2, progress=False, on_scored=rows.extend)
    assert [(r.id, r.solutions, r.scores) for r in rows] == [
        ("q0", ["answer 0", "answer 1", "answer 2"], [1.0, 2.0, 3.0]),
        ("q1", ["answer 1"] * 3, [2.0] * 3),
        ("q2", ["answer 0", "answer 1", "answer 2"], [1.0, 2.0, 3.0])]
    write_jsonl(path, rows + rows[:1])  # a question reported again after a kill
    assert [r.id for r in read_scored(path)] == ["q0", "q1", "q2"]
