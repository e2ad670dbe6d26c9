"""The step-wise search: win counting -> chosen/rejected, seeded tie-breaks, the rollback rule,
caps, no pair from identical texts, resume after a kill, determinism, no gold answer anywhere,
test-time scaling, and an end-to-end run on a real tiny model with the HF backend."""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
import re
from collections import Counter

import pytest

from psr.config import JudgeParams, ModelParams, SearchParams
from psr.engines import HFGenerator, Sample
from psr.io import RecordError, read_jsonl
from psr.judge import GroupJudgment
from psr.models import build_tiny_model, set_threads, train_tokenizer
from psr.policy import Policy
from psr.records import PPDPair, Problem, Question
from psr.search import (
    ExpansionLog,
    ExpansionTrace,
    QuestionStatus,
    SearchCounters,
    SearchStats,
    _advance,
    _State,
    pair_question_id,
    read_expansions,
    solve_with_search,
    status_path,
    step_search,
    trace_search,
)
from tests.conftest import EOS_MARK, SLOT_A, SLOT_B, Crash, ScriptedGenerator

GREEDY = JudgeParams(do_sample=False, max_new_tokens=16)


def search_params(**kw) -> SearchParams:
    base = dict(width=4, temperature=0.5, top_p=0.95, max_step_tokens=16, max_steps=10, expansion_cap=20)
    return SearchParams(**{**base, **kw})


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Step 1: good 1 bad 2 \\boxed{3} [[A]] [[B]] climb"] * 5, 300)


def ladder(q, steps, n, seed, visit):
    """Question "climb T": step k offers one "good k" and n-1 "bad k.i" (seed-dependent text);
    at k == T the good step is boxed and the bad ones end with EOS (final, but not boxed)."""
    target = int(q.split()[-1])
    k = len(steps) + 1
    texts = []
    for i in range(n):
        if i == 0:
            body = f"good {k}" + (f" \\boxed{{{k}}}" if k == target else "")
        else:
            body = f"bad {k}.{i}.{seed % 89}"
        tail = EOS_MARK if (k == target and i > 0) else f"\nStep {k + 1}: ignored"
        texts.append(f"Step {k}: {body}{tail}")
    return texts


def good_first(q, prev, a, b):
    """Prefers a step containing "good"; otherwise the alphabetically smaller one."""
    if ("good" in a) != ("good" in b):
        return "So [[A]]" if "good" in a else "So [[B]]"
    return "[[A]]" if a < b else "[[B]]"


def run(tmp_path, questions, gen, tok, templates, name="ppd.jsonl", search=None, judge=GREEDY, seed=0, **kw):
    out = tmp_path / name
    stats = step_search(questions, Policy(gen, tok, templates), search or search_params(), judge,
                        iteration=2, seed=seed, out_path=out, progress=False, **kw)
    return stats, out


def climbs(*targets: int) -> list[Question]:
    return [Question(id=f"c{t}", question=f"climb {t}") for t in targets]


def test_chosen_is_argmax_rejected_is_argmin_over_ordered_pairs(tmp_path, tok, templates):
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    stats, out = run(tmp_path, climbs(3), gen, tok, templates)
    pairs = read_jsonl(out, PPDPair)
    assert [p.id for p in pairs] == ["c3#1", "c3#2", "c3#3"]
    assert [p.chosen for p in pairs] == ["good 1", "good 2", "good 3 \\boxed{3}"]
    assert [p.previous_steps for p in pairs] == [[], ["good 1"], ["good 1", "good 2"]]
    for p in pairs:
        # good beats all 3 twice; the bad ones are ordered alphabetically: 4, 2, 0
        assert p.scores == [6, 4, 2, 0] and sum(p.scores) == 12
        assert p.rejected.startswith(f"bad {len(p.previous_steps) + 1}.3.")
        assert p.iteration == 2 and p.question == "climb 3"
    assert [p.is_final for p in pairs] == [False, False, True]
    assert [p.rejected_is_final for p in pairs] == [False, False, True]  # the bad last steps hit EOS
    assert stats.finished == 1 and stats.pairs == 3 and stats.counters.expansions == 3 and stats.counters.ties == 0
    assert stats.counters.judge_calls == 3 * 12 and stats.parse_rate == 100.0 and stats.position_consistency == 100.0
    assert json.loads(json.dumps(stats.to_dict()))["pairs"] == 3


def test_rounds_are_lockstep_one_generate_and_one_judge_call_each(tmp_path, tok, templates):
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    run(tmp_path, climbs(1, 2, 3), gen, tok, templates, search=search_params(width=3))
    assert gen.calls == [
        ("policy", 3, 3), ("judge", 18, 1),
        ("policy", 2, 3), ("judge", 12, 1),
        ("policy", 1, 3), ("judge", 6, 1),
    ]


def test_eos_makes_a_step_final(tmp_path, tok, templates):
    def policy(q, steps, n, seed, visit):
        return ["Step 1: good and done" + EOS_MARK] + [f"Step 1: bad {i}\nStep 2: x" for i in range(1, n)]

    stats, out = run(tmp_path, climbs(5), ScriptedGenerator(policy=policy, judge=good_first), tok, templates)
    [pair] = read_jsonl(out, PPDPair)
    assert pair.chosen == "good and done" and pair.is_final and not pair.rejected_is_final
    assert stats.finished == 1


def test_ties_are_broken_by_a_seeded_rule(tmp_path, tok, templates):
    """Two "top" candidates tie for the best score, two "low" ones for the worst."""

    def policy(q, steps, n, seed, visit):
        return [f"Step 1: top {i} \\boxed{{1}}" if i < 2 else f"Step 1: low {i}" for i in range(n)]

    def judge(q, prev, a, b):
        if ("top" in a) != ("top" in b):
            return "[[A]]" if "top" in a else "[[B]]"
        return "[[A]]"  # within a class: pure position bias, so the class ties

    questions = [Question(id=f"q{i}", question=f"climb {i}") for i in range(12)]
    seen_chosen, seen_rejected = set(), set()
    for seed in (0, 1):
        _, out = run(tmp_path, questions, ScriptedGenerator(policy=policy, judge=judge), tok, templates,
                     name=f"s{seed}.jsonl", seed=seed)
        pairs = read_jsonl(out, PPDPair)
        assert len(pairs) == 12 and all(p.scores == [5, 5, 1, 1] for p in pairs)
        seen_chosen |= {p.chosen for p in pairs}
        seen_rejected |= {p.rejected for p in pairs}
    assert seen_chosen == {"top 0 \\boxed{1}", "top 1 \\boxed{1}"}  # only tied-best, and both get picked
    assert seen_rejected == {"low 2", "low 3"}
    _, again = run(tmp_path, questions, ScriptedGenerator(policy=policy, judge=judge), tok, templates,
                   name="s0-again.jsonl", seed=0)
    assert again.read_bytes() == (tmp_path / "s0.jsonl").read_bytes()


def test_all_equal_scores_roll_back_one_step_and_drop_its_pair(tmp_path, tok, templates):
    def policy(q, steps, n, seed, visit):
        k = len(steps) + 1
        if k == 1:
            word = "alpha" if visit == 0 else "beta"  # the retry of step 1 proposes new steps
            return [f"Step 1: {word} {i}\nStep 2:" for i in range(n)]
        return ["Step 2: good \\boxed{2}"] + [f"Step 2: bad {i}\nStep 3:" for i in range(1, n)]

    def judge(q, prev, a, b):
        if prev == ["alpha 0"]:
            return "[[A]]"  # every step-2 candidate after alpha ties: roll back past alpha
        return good_first(q, prev, a, b)

    stats, out = run(tmp_path, climbs(2), ScriptedGenerator(policy=policy, judge=judge), tok, templates)
    pairs = read_jsonl(out, PPDPair)
    assert [(p.id, p.chosen) for p in pairs] == [("c2#1", "beta 0"), ("c2#2", "good \\boxed{2}")]
    assert pairs[1].previous_steps == ["beta 0"]
    [status] = read_jsonl(status_path(out), QuestionStatus)
    assert (status.counters.expansions, status.counters.ties, status.counters.rollbacks, status.n_steps) == (4, 1, 1, 2)
    assert stats.counters.rollbacks == 1 and stats.counters.ties == 1 and stats.finished == 1


def test_a_tie_at_the_first_step_just_resamples(tmp_path, tok, templates):
    def policy(q, steps, n, seed, visit):
        if visit == 0:
            return [f"Step 1: same {i}\nStep 2:" for i in range(n)]
        return ["Step 1: good \\boxed{1}"] + [f"Step 1: bad {i}\nStep 2:" for i in range(1, n)]

    def judge(q, prev, a, b):
        return "[[B]]" if "same" in a else good_first(q, prev, a, b)

    stats, out = run(tmp_path, climbs(1), ScriptedGenerator(policy=policy, judge=judge), tok, templates)
    [pair] = read_jsonl(out, PPDPair)
    assert pair.chosen == "good \\boxed{1}" and pair.previous_steps == []
    assert (stats.counters.ties, stats.counters.rollbacks, stats.counters.expansions) == (1, 0, 2)


def test_expansion_cap_stops_and_unfinished_pairs_are_dropped_by_default(tmp_path, tok, templates):
    gen = ScriptedGenerator(policy=ladder, judge=lambda *a: "[[A]]")  # always a tie
    stats, out = run(tmp_path, climbs(3), gen, tok, templates, search=search_params(width=3, expansion_cap=5))
    assert not out.exists() or read_jsonl(out, PPDPair) == []
    [status] = read_jsonl(status_path(out), QuestionStatus)
    assert (status.stop, status.finished, status.counters.expansions, status.counters.ties) == ("expansion_cap", False, 5, 5)
    assert len(gen.calls) == 10 and stats.finished == 0 and stats.finished_rate == 0.0
    assert stats.position_consistency == 0.0


def test_max_steps_cap_and_keep_unfinished(tmp_path, tok, templates):
    never_final = lambda q, steps, n, seed, visit: ladder("climb 99", steps, n, seed, visit)  # noqa: E731
    for keep, expected in ((False, 0), (True, 3)):
        gen = ScriptedGenerator(policy=never_final, judge=good_first)
        stats, out = run(tmp_path, climbs(99), gen, tok, templates, name=f"k{keep}.jsonl",
                         search=search_params(max_steps=3, keep_unfinished=keep))
        pairs = read_jsonl(out, PPDPair) if out.exists() else []
        assert len(pairs) == expected and stats.pairs == expected
        [status] = read_jsonl(status_path(out), QuestionStatus)
        assert (status.stop, status.n_steps, status.finished) == ("max_steps", 3, False)


def test_identical_chosen_and_rejected_texts_never_make_a_pair():
    state = _State(Question("q", "climb 2"), prompt="p")
    verdicts = GroupJudgment(wins=[4, 2, 0])  # e.g. a sampled judge scored two copies differently
    _advance(state, ["same", "other", "same"], [False] * 3, verdicts, search_params(width=3), 1, 0)
    assert state.steps == ["same"] and state.pairs == [None]  # the search goes on, no pair
    _advance(state, ["x", "y", "z"], [True, False, False], GroupJudgment(wins=[4, 2, 0]), search_params(width=3), 1, 0)
    assert state.pairs[0] is None and state.pairs[1].chosen == "x" and state.stop == "final"


def test_resume_after_a_kill_gives_the_uninterrupted_file(tmp_path, tok, templates):
    questions = climbs(1, 2, 3, 4)
    full_stats, full = run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first), tok, templates,
                           name="full.jsonl", search=search_params(width=3))
    for crash_at in (3, 4, 5, 6, 7):  # kills in several rounds, before and after questions finish
        name = f"crash{crash_at}.jsonl"
        with pytest.raises(Crash):
            run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first, fail_after=crash_at),
                tok, templates, name=name, search=search_params(width=3))
        again = ScriptedGenerator(policy=ladder, judge=good_first)
        stats, out = run(tmp_path, questions, again, tok, templates, name=name, search=search_params(width=3))
        assert out.read_bytes() == full.read_bytes()
        assert status_path(out).read_bytes() == status_path(full).read_bytes()
        assert stats.resumed == (crash_at - 1) // 2  # one question finishes per completed round
        same = {k: v for k, v in stats.to_dict().items() if k not in ("wall_time_s", "resumed")}
        assert same == {k: v for k, v in full_stats.to_dict().items() if k not in ("wall_time_s", "resumed")}
    # a finished file is not searched again
    idle = ScriptedGenerator(policy=ladder, judge=good_first)
    stats, _ = run(tmp_path, questions, idle, tok, templates, name="full.jsonl", search=search_params(width=3))
    assert idle.calls == [] and stats.resumed == 4 and stats.pairs == full_stats.pairs


def test_a_kill_between_pairs_and_status_drops_the_orphan_pairs(tmp_path, tok, templates):
    questions = climbs(2, 3)
    _, full = run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first), tok, templates,
                  name="full.jsonl")
    expected = full.read_bytes()
    # the last question's pairs are on disk, its status line never made it, and a torn line follows
    log = status_path(full)
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))
    with open(full, "a") as f:
        f.write('{"id": "c3#9", "question": "cli')
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    stats, _ = run(tmp_path, questions, gen, tok, templates, name="full.jsonl")
    assert full.read_bytes() == expected and stats.resumed == 1
    assert {c[0] for c in gen.calls} == {"policy", "judge"} and gen.calls[0][1] == 1  # only c3 again


def test_files_that_disagree_are_an_error(tmp_path, tok, templates):
    _, out = run(tmp_path, climbs(2), ScriptedGenerator(policy=ladder, judge=good_first), tok, templates)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))  # a pair went missing although its status vouches for it
    with pytest.raises(RecordError, match="pairs"):
        run(tmp_path, climbs(2), ScriptedGenerator(policy=ladder, judge=good_first), tok, templates)


def test_same_seed_same_file_other_seed_other_file(tmp_path, tok, templates):
    files = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        _, out = run(tmp_path, climbs(2, 3), ScriptedGenerator(policy=ladder, judge=good_first), tok, templates,
                     name=f"{name}.jsonl", seed=seed)
        files[name] = out.read_bytes()
    assert files["a"] == files["b"] and files["a"] != files["c"]


def test_no_gold_answer_can_reach_the_search(tmp_path, tok, templates):
    gold = "GOLD-4242"
    problems = [Problem(id=f"p{i}", question=f"climb {i}", gold=gold, steps=[f"good {i} \\boxed{{{gold}}}"])
                for i in (1, 2)]
    questions = [Question(id=p.id, question=p.question) for p in problems]
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    run(tmp_path, questions, gen, tok, templates)
    solve_with_search(questions, Policy(gen, tok, templates), search_params(), GREEDY, seed=0, progress=False)
    assert gen.prompts and not any(gold in p for p in gen.prompts)
    assert {f.name for f in dataclasses.fields(Question)} == {"id", "question"}
    for fn in (step_search, solve_with_search):
        names = set(inspect.signature(fn).parameters)
        assert not {n for n in names if re.search("gold|answer|solution|reference", n)}
    with pytest.raises(TypeError, match="Question"):
        run(tmp_path, problems, gen, tok, templates, name="bad.jsonl")


def test_bad_inputs_fail_before_any_compute(tmp_path, tok, templates):
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    with pytest.raises(ValueError, match="duplicate question id"):
        run(tmp_path, [Question("x", "climb 1"), Question("x", "climb 2")], gen, tok, templates)
    with pytest.raises(ValueError, match="width"):
        run(tmp_path, climbs(1), gen, tok, templates, search=search_params().model_copy(update={"width": 1}))
    assert gen.calls == []


def test_solve_with_search_returns_full_solutions_and_writes_nothing(tmp_path, tok, templates, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    out = solve_with_search(climbs(2, 1), Policy(gen, tok, templates), search_params(), GREEDY, seed=0, progress=False)
    assert out == ["Step 1: good 1\nStep 2: good 2 \\boxed{2}", "Step 1: good 1 \\boxed{1}"]
    assert list(tmp_path.iterdir()) == []


def test_status_lines_are_flat_objects_and_read_back_whole(tmp_path, tok, templates):
    _, out = run(tmp_path, climbs(2), ScriptedGenerator(policy=ladder, judge=good_first), tok, templates)
    [line] = status_path(out).read_text().splitlines()
    counters = [f.name for f in dataclasses.fields(SearchCounters)]
    assert list(json.loads(line)) == ["id", "finished", "stop", "n_pairs", "n_steps", *counters]
    [status] = read_jsonl(status_path(out), QuestionStatus)
    assert status.counters == SearchCounters(**{k: v for k, v in json.loads(line).items() if k in counters})
    # a line written before `unanimous` was counted still reads, as 0
    old = {k: v for k, v in json.loads(line).items() if k != "unanimous"}
    status_path(out).write_text(json.dumps(old) + "\n")
    [status] = read_jsonl(status_path(out), QuestionStatus)
    assert status.counters.unanimous == 0 and status.counters.expansions == 2


def test_stats_sum_the_status_counters_and_keep_their_summary_keys(tmp_path, tok, templates):
    stats, out = run(tmp_path, climbs(1, 3), ScriptedGenerator(policy=ladder, judge=good_first), tok, templates)
    statuses = read_jsonl(status_path(out), QuestionStatus)
    assert stats.counters == statuses[0].counters + statuses[1].counters
    assert list(stats.to_dict()) == [
        "questions", "finished", "finished_rate", "pairs", "pairs_per_question", "expansions", "ties",
        "unanimous", "rollbacks", "judge_calls", "judge_generations", "parse_rate", "position_consistency",
        "candidate_tokens", "judge_tokens", "wall_time_s", "resumed",
    ]
    d = stats.to_dict()
    assert (d["questions"], d["pairs"], d["expansions"], d["judge_calls"]) == (2, 4, 4, 48)
    assert d["pairs_per_question"] == 2.0 and d["parse_rate"] == 100.0 and d["finished_rate"] == 100.0


def test_progress_counts_finished_questions_and_resumed_ones_at_the_start(tmp_path, tok, templates):
    seen = []
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    run(tmp_path, climbs(3, 1, 2), gen, tok, templates, on_progress=lambda *a: seen.append(a))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    seen.clear()
    run(tmp_path, climbs(1, 2), gen, tok, templates, name="part.jsonl")
    run(tmp_path, climbs(1, 2, 3), gen, tok, templates, name="part.jsonl", on_progress=lambda *a: seen.append(a))
    assert seen == [(2, 3), (3, 3)]


def test_every_expansion_is_traced(tmp_path, tok, templates):
    traces: list[ExpansionTrace] = []
    gen = ScriptedGenerator(policy=ladder, judge=good_first)
    stats, out = run(tmp_path, climbs(2), gen, tok, templates, on_expansion=traces.append)
    assert len(traces) == stats.counters.expansions == 2
    first, last = traces
    assert (first.question_id, first.previous_steps, first.expansion) == ("c2", [], 1)
    assert first.candidates[0] == "good 1" and len(first.candidates) == len(first.samples) == 4
    assert len(first.judgments) == len(first.judge_texts) == 12
    assert (0, 1, "A") in first.judgments and (1, 0, "B") in first.judgments  # good wins from either slot
    assert first.wins == [6, 4, 2, 0] and (first.chosen, first.rejected) == (0, 3)
    assert (first.outcome, first.stop, last.stop) == ("pair", "", "final")
    assert last.previous_steps == ["good 1"] and last.finals[last.chosen]
    [p1, p2] = read_jsonl(out, PPDPair)
    assert [(p.chosen, p.rejected) for p in (p1, p2)] == [
        (t.candidates[t.chosen], t.candidates[t.rejected]) for t in traces]


def test_the_expansion_log_holds_every_expansion_of_finished_questions_once_across_a_kill(tmp_path, tok, templates):
    questions = climbs(1, 2, 3)
    traces: list[ExpansionTrace] = []
    run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first), tok, templates,
        name="full.jsonl", on_expansion=traces.append)
    log_path = tmp_path / "expansions.jsonl"
    with pytest.raises(Crash):  # killed in round 3: c1 and c2 have finished, c3 has not
        run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first, fail_after=5), tok, templates,
            on_expansion=ExpansionLog(log_path))
    assert {t.question_id for t in read_expansions(log_path)} == {"c1", "c2"}
    run(tmp_path, questions, ScriptedGenerator(policy=ladder, judge=good_first), tok, templates,
        on_expansion=ExpansionLog(log_path))
    logged = sorted(read_expansions(log_path), key=lambda t: (t.question_id, t.expansion))
    expected = sorted(traces, key=lambda t: (t.question_id, t.expansion))
    assert [(t.question_id, t.expansion, t.candidates, t.wins, t.chosen, t.rejected, t.outcome) for t in logged] == [
        (t.question_id, t.expansion, t.candidates, t.wins, t.chosen, t.rejected, t.outcome) for t in expected]
    assert [[tuple(j) for j in t.judgments] for t in logged] == [t.judgments for t in expected]
    assert all(t.judge_texts == [] and t.samples == [] for t in logged)  # kept small


def dice(q, steps, n, seed, visit):
    """Like a sampling model, the texts depend only on (seed, prompt): step k is "roll k.0" or
    "roll k.1" at random (repeats and unanimity happen); at k == target every step is final."""
    target, k = int(q.split()[-1]), len(steps) + 1
    rng = random.Random(f"{seed}|{q}|{steps}")
    out = []
    for _ in range(n):
        v = rng.randrange(2)
        out.append(f"Step {k}: roll {k}.{v}" + (f" \\boxed{{{v}}}" if k == target else f"\nStep {k + 1}:"))
    return out


def dice_judge(q, prev, a, b):
    """The larger roll wins; after a step that rolled 0 it only ever names slot A (all scores tie)."""
    if prev and prev[-1].endswith(".0"):
        return "[[A]]"
    return "[[A]]" if a > b else "[[B]]"


def surviving_pairs(traces: list[ExpansionTrace]) -> list[tuple[list[str], str, str]]:
    """The pairs a question keeps: replay the trace, a rollback dropping the last step's pair."""
    kept: list = []
    for t in traces:
        if t.outcome == "rollback":
            if t.previous_steps:
                kept.pop()
        else:
            pair = (t.previous_steps, t.candidates[t.chosen], t.candidates[t.rejected]) if t.outcome == "pair" else None
            kept.append(pair)
    return [k for k in kept if k]


def test_trace_search_replays_what_the_stage_did_for_one_question(tmp_path, tok, templates):
    questions = [Question(f"d{i}", f"dice {2 + i % 4}") for i in range(12)]
    search = search_params(width=3, max_steps=6, expansion_cap=12, keep_unfinished=True)
    run(tmp_path, questions, ScriptedGenerator(policy=dice, judge=dice_judge), tok, templates, search=search, seed=5)
    pairs = read_jsonl(tmp_path / "ppd.jsonl", PPDPair)
    statuses = {s.id: s for s in read_jsonl(status_path(tmp_path / "ppd.jsonl"), QuestionStatus)}
    outcomes: Counter = Counter()
    for q in questions:
        policy = Policy(ScriptedGenerator(policy=dice, judge=dice_judge), tok, templates)
        traces = trace_search(q, policy, search, GREEDY, iteration=2, seed=5)
        outcomes.update(t.outcome for t in traces)
        assert len(traces) == statuses[q.id].counters.expansions and traces[-1].stop == statuses[q.id].stop
        assert surviving_pairs(traces) == [
            (p.previous_steps, p.chosen, p.rejected) for p in pairs if pair_question_id(p) == q.id]
    assert outcomes["pair"] and outcomes["rollback"] and outcomes["unanimous"]  # the replay met every case
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ppd.jsonl", "ppd.status.jsonl"]  # traces write nothing here


# ----------------------------------------------------------------------------- real tiny model


@pytest.fixture(scope="module")
def tiny():
    set_threads(1)
    corpus = ["Solve step by step. Put the answer in \\boxed{}.\nProblem: climb 2\nStep 1: 2 + 3 = 5",
              "Which next step is better? [[A]] or [[B]]"] * 10
    tok = train_tokenizer(corpus, 300)
    model = build_tiny_model(ModelParams(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tok, 0)
    return model.eval(), tok


class JudgeByLength:
    """Real HF sampling for candidates, a scripted judge (longer step wins; random weights never
    write a verdict) so that the run produces pairs whose texts come from the model."""

    def __init__(self, engine: HFGenerator):
        self.engine = engine
        self.judge_calls = 0

    def generate(self, prompts, **kw):
        if prompts and SLOT_A.search(prompts[0]):
            self.judge_calls += 1
            out = []
            for p in prompts:
                a, b = SLOT_A.search(p).group(1), SLOT_B.search(p).group(1)
                verdict = "[[A]]" if (len(a), a) > (len(b), b) else "[[B]]"
                out.append([Sample(verdict, 2, "eos")])
            return out
        return self.engine.generate(prompts, **kw)


def test_end_to_end_on_a_real_tiny_model(tmp_path, tiny, templates):
    model, tok = tiny
    search = search_params(width=3, max_step_tokens=6, max_steps=2, expansion_cap=3, max_tokens_per_batch=4096)
    judge = JudgeParams(do_sample=False, max_new_tokens=5)
    questions = [Question(id=f"t{i}", question=f"climb {i}") for i in range(3)]
    engine = HFGenerator(model, tok, search.max_tokens_per_batch)
    stats, out = run(tmp_path, questions, engine, tok, templates, name="hf.jsonl", search=search, judge=judge, seed=3)
    assert isinstance(stats, SearchStats) and stats.questions == 3
    statuses = read_jsonl(status_path(out), QuestionStatus)
    assert sorted(s.id for s in statuses) == ["t0", "t1", "t2"]
    assert stats.counters.judge_calls == stats.counters.expansions * 6 and 3 <= stats.counters.expansions <= 9
    assert stats.counters.candidate_tokens > 0 and stats.counters.judge_tokens > 0 and 0 <= stats.parse_rate <= 100
    _, again = run(tmp_path, questions, HFGenerator(model, tok, search.max_tokens_per_batch), tok, templates,
                   name="hf2.jsonl", search=search, judge=judge, seed=3)
    assert status_path(again).read_bytes() == status_path(out).read_bytes()


def test_real_sampling_same_seed_same_ppd_file(tmp_path, tiny, templates):
    model, tok = tiny
    search = search_params(width=3, max_step_tokens=6, max_steps=2, expansion_cap=3, keep_unfinished=True)
    questions = [Question(id=f"t{i}", question=f"climb {i}") for i in range(3)]
    files = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        gen = JudgeByLength(HFGenerator(model, tok, search.max_tokens_per_batch))
        stats, out = run(tmp_path, questions, gen, tok, templates, name=f"{name}.jsonl", search=search, seed=seed)
        files[name] = out.read_bytes()
        assert stats.pairs == 6 and gen.judge_calls == 2  # lockstep: one judge call per round
    assert files["a"] == files["b"] != files["c"]
    pairs = read_jsonl(tmp_path / "a.jsonl", PPDPair)
    assert all(len(p.chosen) >= len(p.rejected) and p.chosen != p.rejected for p in pairs)


def test_unanimous_candidates_are_taken_without_judging_or_pair(tmp_path, tok, templates):
    """A confident model samples the same step w times: nothing to compare, so the step is taken
    (no judge call, no pair, no rollback) instead of being rolled back forever as an all-equal tie."""

    def policy(q, steps, n, seed, visit):
        k = len(steps) + 1
        if k == 1:  # all four samples agree
            return ["Step 1: same\nStep 2: x"] * n
        return ["Step 2: good \\boxed{2}" + EOS_MARK] + [f"Step 2: bad {i}{EOS_MARK}" for i in range(1, n)]

    gen = ScriptedGenerator(policy=policy, judge=good_first)
    stats, out = run(tmp_path, climbs(2), gen, tok, templates)
    [pair] = read_jsonl(out, PPDPair)
    assert pair.previous_steps == ["same"] and pair.chosen == "good \\boxed{2}"
    assert stats.counters.unanimous == 1 and stats.counters.ties == 0 and stats.counters.rollbacks == 0 and stats.finished == 1
    assert gen.calls == [("policy", 1, 4), ("policy", 1, 4), ("judge", 12, 1)]


def test_duplicate_candidates_are_scored_once(tmp_path, tok, templates):
    """Scores are wins over ordered pairs of distinct texts: two copies of one step count once."""

    def policy(q, steps, n, seed, visit):
        return ["Step 1: good \\boxed{1}" + EOS_MARK] * 2 + [f"Step 1: bad{EOS_MARK}"] * (n - 2)

    gen = ScriptedGenerator(policy=policy, judge=good_first)
    stats, out = run(tmp_path, climbs(1), gen, tok, templates)
    [pair] = read_jsonl(out, PPDPair)
    assert pair.scores == [2, 0] and pair.chosen == "good \\boxed{1}" and pair.rejected == "bad"
    assert stats.counters.judge_calls == 2


def test_trace_search_on_a_real_tiny_model_matches_the_stage(tmp_path, tiny, templates):
    model, tok = tiny
    search = search_params(width=3, max_step_tokens=6, max_steps=2, expansion_cap=3, keep_unfinished=True)
    questions = [Question(id=f"t{i}", question=f"climb {i}") for i in range(3)]
    engine = JudgeByLength(HFGenerator(model, tok, search.max_tokens_per_batch))
    run(tmp_path, questions, engine, tok, templates, search=search, seed=4)
    pairs = read_jsonl(tmp_path / "ppd.jsonl", PPDPair)
    assert len(pairs) == 6
    for q in questions:  # alone in its batch now, with the others before
        policy = Policy(JudgeByLength(HFGenerator(model, tok, search.max_tokens_per_batch)), tok, templates)
        traces = trace_search(q, policy, search, GREEDY, iteration=2, seed=4)
        assert surviving_pairs(traces) == [
            (p.previous_steps, p.chosen, p.rejected) for p in pairs if pair_question_id(p) == q.id]


# ------------------------------------------------------------------ search.dedupe_candidates


def unanimous_then_split(q, steps, n, seed, visit):
    """The first step: all w samples the same text on its first visit; otherwise a final good step
    among final bad ones."""
    k = len(steps) + 1
    if k == 1 and visit == 0:
        return ["Step 1: same\nStep 2: x"] * n
    return [f"Step {k}: good \\boxed{{{k}}}" + EOS_MARK] + [f"Step {k}: bad {i}{EOS_MARK}" for i in range(1, n)]


@pytest.mark.parametrize("dedupe", [True, False])
def test_identical_samples_are_taken_unjudged_or_rolled_back_as_the_paper_says(tmp_path, tok, templates, dedupe):
    """Ours (dedupe): w copies of one step are taken without a judge call. The paper's literal rule:
    every copy is judged against every other, the scores are all equal, and the step is sampled
    again (a tie at the first step resamples)."""
    gen = ScriptedGenerator(policy=unanimous_then_split, judge=good_first)
    traces: list[ExpansionTrace] = []
    stats, out = run(tmp_path, climbs(1), gen, tok, templates, search=search_params(dedupe_candidates=dedupe),
                     on_expansion=traces.append)
    c = stats.counters
    [pair] = read_jsonl(out, PPDPair)
    assert stats.finished == 1
    if dedupe:
        assert [t.outcome for t in traces] == ["unanimous", "pair"]
        assert (c.unanimous, c.ties, c.judge_calls) == (1, 0, 12)
        assert pair.previous_steps == ["same"] and pair.chosen == "good \\boxed{2}"
        assert gen.calls == [("policy", 1, 4), ("policy", 1, 4), ("judge", 12, 1)]
    else:
        assert [t.outcome for t in traces] == ["rollback", "pair"]
        assert traces[0].candidates == ["same"] * 4 and len(set(traces[0].wins)) == 1
        assert (c.unanimous, c.ties, c.rollbacks, c.judge_calls) == (0, 1, 0, 24)
        assert pair.previous_steps == [] and pair.chosen == "good \\boxed{1}"
        # the 12 judgments of four identical texts are one distinct prompt, decoded once
        assert gen.calls == [("policy", 1, 4), ("judge", 1, 1), ("policy", 1, 4), ("judge", 12, 1)]


def test_the_literal_rule_scores_every_copy_over_all_ordered_pairs(tmp_path, tok, templates):
    """Two copies of the good step and two of a bad one, w = 4: 12 judgments. Each good copy beats
    both bad ones in both slots (4) and its twin once (the judge names slot B for equal texts);
    each bad copy only beats its twin once."""

    def policy(q, steps, n, seed, visit):
        return ["Step 1: good \\boxed{1}" + EOS_MARK] * 2 + [f"Step 1: bad{EOS_MARK}"] * (n - 2)

    gen = ScriptedGenerator(policy=policy, judge=good_first)
    stats, out = run(tmp_path, climbs(1), gen, tok, templates, search=search_params(dedupe_candidates=False))
    [pair] = read_jsonl(out, PPDPair)
    assert pair.scores == [5, 5, 1, 1] and pair.chosen == "good \\boxed{1}" and pair.rejected == "bad"
    # 12 ordered comparisons; greedy judging decodes their 4 distinct prompts once each
    assert stats.counters.judge_calls == 12 and stats.counters.judge_generations == 4
    assert gen.calls == [("policy", 1, 4), ("judge", 4, 1)]


def test_dedupe_is_the_default():
    assert SearchParams().dedupe_candidates is True
