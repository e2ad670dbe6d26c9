"""Real-data builders (psr.tasks.real and the modules it builds from) on small hand-written fixtures in the real schemas
(NuminaMath-CoT, GSM8K/MATH train, PRM800K); the real GSM8K/MATH train files when
PSR_DATASET_DIR is set."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from psr.config import ModelParams, load
from psr.io import RecordError, read_jsonl, write_jsonl
from psr.prompts import parse_score, parse_verdict
from psr.records import EFTRecord, Question
from psr.steps import is_final, join_steps, split_steps
from psr.tasks import eft, ift, real, rows, segment, sources
from psr.tasks.data import TaskData

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "real"
NUMINA = str(FIX / "numina_cot.jsonl")
GSM8K = str(FIX / "gsm8k_train.jsonl")
MATH = str(FIX / "math_train.jsonl")
PRM = str(FIX / "prm800k.jsonl")


def key(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-datasets-cache"))


@pytest.fixture(scope="module")
def prm(cache):
    return eft.read_prm_solutions(sources.Source(PRM, cache))


def raw_rows(path: str) -> list[dict]:
    return read_jsonl(path)


# ------------------------------------------------------------------------------ source specs


def test_parse_source_hub_and_local(tmp_path):
    s = sources.parse_source("hub:tasksource/PRM800K?files=phase1_train.jsonl,phase2_train.jsonl&split=train")
    assert s.hub and s.name == "tasksource/PRM800K" and s.files == ("phase1_train.jsonl", "phase2_train.jsonl")
    assert sources.parse_source("hub:AI-MO/NuminaMath-CoT").split == "train"
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert sources.parse_source(str(tmp_path)).paths == (str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet"))
    assert sources.parse_source(f"{tmp_path}/*.jsonl,{GSM8K}").paths == (str(tmp_path / "a.jsonl"), GSM8K)
    os.environ["PSR_TEST_FIXDIR"] = str(FIX)
    assert sources.parse_source("$PSR_TEST_FIXDIR/math_train.jsonl").paths == (MATH,)
    for bad, msg in [("", "empty"), ("hub:nonsense", "OWNER/NAME"), ("hub:a/b?revision=x", "unknown option"),
                     (str(tmp_path / "missing.jsonl"), "no such file"), (str(tmp_path / "notes.txt"), "not .jsonl")]:
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            sources.parse_source(bad)


def test_source_reports_file_and_line(tmp_path, cache):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"problem": "p1", "solution": "s \\\\boxed{1}"}\n\n{"problem": "p2"}\n')
    src = sources.Source(str(path), cache)
    assert len(src) == 2 and src.where(1) == f"{path}:3"
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:3: field 'solution'"):
        ift.build_ift(src, 2, seed=0)


def test_invalid_json_line_is_named(tmp_path, cache):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": {"problem": "x"}, "label": {"steps": [], "finish_reason": "solution"}}\n{"question": \n')
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        sources.Source(str(path), cache)


# ------------------------------------------------------------------------------ IFT


def test_ift_from_numinamath_keeps_content_and_ends_with_the_answer(cache):
    stats: dict = {}
    src = sources.Source(NUMINA, cache)
    records = ift.build_ift(src, 6, seed=0, stats=stats)
    solutions: dict[str, set[str]] = {}  # the fixture repeats one question with another solution
    for row in raw_rows(NUMINA):
        solutions.setdefault(rows.normalize_question(row["problem"]), set()).add(key(row["solution"]))
    assert len(records) == 6 and len({rows.normalize_question(r.question) for r in records}) == 6
    for rec in records:
        assert key("".join(rec.steps)) in solutions[rows.normalize_question(rec.question)]
        assert is_final(rec.steps[-1]) and not any(is_final(s) for s in rec.steps[:-1])
        assert split_steps(join_steps(rec.steps)) == rec.steps  # survives the Step n: format
    questions = " ".join(r.question for r in records)
    assert "Prove that" not in questions  # no \boxed answer
    assert "Tom has 15 apples" not in questions  # already carries Step n: markers
    assert stats["ift_skipped_no_boxed"] == 1 and stats["ift_skipped_has_step_markers"] == 1
    assert stats["ift_skipped_duplicate_or_excluded"] == 1  # the same question, other whitespace
    # a 7th usable question does not exist
    with pytest.raises(ValueError, match="found only 6"):
        ift.build_ift(src, 7, seed=0)


def test_ift_segmentation_keeps_latex_blocks_and_lead_ins(cache):
    steps = {r.question[:12]: r.steps for r in ift.build_ift(sources.Source(NUMINA, cache), 6, seed=0)}
    solve = steps["Solve for $x"]
    # the align* block is never cut, and the remark after the answer stays in the final step
    assert any("\\begin{align*}" in s and "\\end{align*}" in s for s in solve)
    assert solve[-1].endswith("so no root is extraneous.") and "\\boxed{4}" in solve[-1]
    shop = steps["A shop sells"]
    assert "1. **Cost of the pens:** \\[ 4 \\times 3 = 12 \\text{ yuan} \\]" in shop


def test_segment_solution_keeps_figures_and_display_math_whole():
    from psr.steps import segment_solution

    solution = ("Here is the figure: [asy]\ndraw((0,0)--(1,1));\nlabel(\"$A$\", (0,0));\n[/asy]\n"
                "Any root must satisfy\n\\[x^2 = 4.\\]\nSo $x = \\boxed{2}$ or $x = -2$.\nBoth work.")
    steps = segment_solution(solution)
    assert steps == ['Here is the figure: [asy] draw((0,0)--(1,1)); label("$A$", (0,0)); [/asy]',
                     "Any root must satisfy \\[x^2 = 4.\\]",
                     "So $x = \\boxed{2}$ or $x = -2$. Both work."]


def test_ift_is_deterministic_in_the_seed(cache):
    src = sources.Source(NUMINA, cache)
    first = [r.id for r in ift.build_ift(src, 3, seed=1)]
    assert first == [r.id for r in ift.build_ift(src, 3, seed=1)]
    assert len({tuple(r.id for r in ift.build_ift(src, 3, seed=s)) for s in range(6)}) > 1


def test_gsm8k_and_math_train_stand_ins(cache):
    gsm = {r.question[:8]: r.steps for r in ift.build_ift(sources.Source(GSM8K, cache), 3, seed=0)}
    assert gsm["Mia read"] == ["On Tuesday Mia reads 12*2 = 24 pages.", "In total she reads 12+24 = 36 pages.",
                              "The answer is \\boxed{36}."]
    assert gsm["A bakery"][-1] == "The answer is \\boxed{3600}."
    assert all("<<" not in s for steps in gsm.values() for s in steps)  # calculator markup removed
    math = {r.question[:8]: r.steps for r in ift.build_ift(sources.Source(MATH, cache), 3, seed=0)}
    # one sentence per step; display math continues its sentence; the check after the answer
    # stays in the final step
    assert math["If $3x -"] == ["Adding $5$ to both sides gives $3x = 15$.",
                                "Dividing by $3$, \\[x = \\boxed{5}.\\] We can check: $3 \\cdot 5 - 5 = 10$."]


@pytest.mark.skipif(not os.environ.get("PSR_DATASET_DIR"), reason="PSR_DATASET_DIR not set")
@pytest.mark.parametrize("name", ["gsm8k", "math"])
def test_real_train_files(name, cache):
    path = Path(os.environ["PSR_DATASET_DIR"]) / name / "train.jsonl"
    src = sources.Source(str(path), cache)
    schema = rows.solution_schema(src.columns())
    raws = {r.id: r for r in ift.collect_solutions(src, 300, seed=0)}
    for rec in ift.build_ift(src, 300, seed=0):
        assert key("".join(rec.steps)) == key(raws[rec.id].solution)
        assert is_final(rec.steps[-1]) and not any(is_final(s) for s in rec.steps[:-1])
    assert schema == ("gsm8k" if name == "gsm8k" else "problem")


# ------------------------------------------------------------------------------ LLM segmentation


def test_accept_segmentation():
    solution = "We add: $2 + 3 = 5$.\nSo the answer is $\\boxed{5}$."
    good = "Step 1: We add: $2 + 3 = 5$.\nStep 2: So the answer is $\\boxed{5}$."
    assert segment.accept_segmentation(good, solution) == ["We add: $2 + 3 = 5$.", "So the answer is $\\boxed{5}$."]
    assert segment.accept_segmentation("Step 1: We add: $2 + 3 = 5$.", solution) is None  # dropped the answer
    assert segment.accept_segmentation("Step 1: We add: $2 + 3 = 6$.\nStep 2: So the answer is $\\boxed{5}$.", solution) is None
    assert segment.accept_segmentation("Sure! " + good, solution) is None  # text outside the steps
    assert segment.accept_segmentation("no steps at all", solution) is None


def test_llm_segment_falls_back_on_a_random_model(tmp_path):
    import torch

    from psr.config import PromptParams
    from psr.engines import HFGenerator
    from psr.models import build_tiny_model, train_tokenizer
    from psr.policy import Policy
    from psr.prompts import Templates, chat_prompt

    torch.set_num_threads(1)
    raws = [rows.RawSolution("ift-a", "What is $2+3$?", "We add: $2 + 3 = 5$.\nSo the answer is $\\boxed{5}$."),
            rows.RawSolution("ift-b", "What is $4 \\cdot 2$?", "Multiply to get $8$. The answer is $\\boxed{8}$.")]
    corpus = [segment.SEGMENT_PROMPT.format(question=r.question, solution=r.solution) for r in raws] * 4
    tok = train_tokenizer(corpus, 300, tmp_path / "m")
    params = ModelParams(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
    model = build_tiny_model(params, tok, seed=0)
    assert chat_prompt(tok, "x")  # the tiny tokenizer has a chat template
    teacher = Policy(HFGenerator(model, tok), tok, Templates.from_params(PromptParams()))
    records, fallbacks = segment.llm_segment(raws, teacher, batch_size=1, max_new_tokens=12)
    assert fallbacks == ["ift-a", "ift-b"]
    assert records == [ift.rule_segment(r) for r in raws]


# ------------------------------------------------------------------------------ PRM800K


def test_prm_rows_are_parsed_and_checked(tmp_path, cache):
    prm_rows = raw_rows(PRM)
    bad = json.loads(json.dumps(prm_rows[0]))
    bad["label"]["steps"][1]["completions"][0]["rating"] = 5
    path = tmp_path / "prm.jsonl"
    write_jsonl(path, [prm_rows[1], bad])
    with pytest.raises(RecordError, match=r":2: field 'label.steps\[1\].completions\[0\].rating'"):
        eft.read_prm_solutions(sources.Source(str(path), cache))
    missing = json.loads(json.dumps(prm_rows[0]))
    del missing["question"]["problem"]
    write_jsonl(path, [missing])
    with pytest.raises(RecordError, match=r":1: field 'question.problem'"):
        eft.read_prm_solutions(sources.Source(str(path), cache))
    out_of_range = json.loads(json.dumps(prm_rows[0]))
    out_of_range["label"]["steps"][0]["chosen_completion"] = 3
    assert "chosen_completion" in str(pytest.raises(RecordError, rows.read_prm_row, out_of_range, "f:1").value)


def test_prm_answer_marker_becomes_boxed():
    assert rows.prm_step_text("So $x = 5$.\n\n# Answer\n\n5") == "So $x = 5$.\nThe answer is $\\boxed{5}$."
    assert rows.prm_step_text("# Answer\n\n\\frac{5}{2}") == "The answer is $\\boxed{\\frac{5}{2}}$."
    assert rows.prm_step_text("Step 3: copy") is None and rows.prm_step_text("  ") is None


def test_step_pairs_from_prm800k(prm):
    import random

    problems = [s.problem for s in prm]
    assert "Find $x$ if $x = x + 1$." not in problems  # bad_problem is skipped
    pairs = {(p.question, p.step_index): p for s in prm for p in eft.step_pairs(s, random.Random(0))}
    p = pairs[("How many positive divisors does $12$ have?", 2)]
    assert (p.good, p.bad) == ("Counting them, there are $6$ divisors.", "So there are $5$ divisors.")
    assert p.previous_steps == ["I list the divisors of $12$.", "They are $1, 2, 3, 4, 6, 12$."]
    # earlier steps are what the labeller continued with, a human completion included
    p = pairs[("Simplify $\\frac{10}{4}$.", 1)]
    assert p.previous_steps == ["Dividing top and bottom by $2$ gives $\\frac{5}{2}$."]
    assert p.good == "The answer is $\\boxed{\\frac{5}{2}}$."
    # a flagged +1 completion is never the good step
    p = pairs[("What is $100 - 37$?", 0)]
    assert p.good == "Subtracting, $100 - 37 = 63$." and p.previous_steps == []
    assert ("Evaluate $\\log_2 8$.", 0) not in pairs and ("What is $9 \\cdot 9$?", 0) not in pairs
    assert len(pairs) == 6


def test_eft_split_both_orders_and_held_out_by_question(prm):
    for seed in range(6):
        stats: dict = {}
        train, test, test_questions = eft.build_eft(prm, n_train=3, n_test=2, seed=seed, stats=stats)
        assert len(train) == 6 and len(test) == 2
        assert stats["eft_candidate_pairs"] == 6  # the duplicate labelling of one solution is merged
        assert not {rows.normalize_question(r.question) for r in train} & test_questions
        assert {rows.normalize_question(r.question) for r in test} <= test_questions
        for rec in train + test:
            assert isinstance(rec, EFTRecord) and parse_verdict(rec.judgment) == rec.verdict
        assert sorted(r.verdict for r in test) == ["A", "B"]
        by_pair: dict[str, list[EFTRecord]] = {}
        for rec in train:
            by_pair.setdefault(rec.id.rsplit("-", 1)[0], []).append(rec)
        for ab, ba in by_pair.values():
            assert (ab.verdict, ba.verdict) == ("A", "B")
            assert (ab.step_a, ab.step_b) == (ba.step_b, ba.step_a)
            assert ab.question == ba.question and ab.previous_steps == ba.previous_steps
    assert eft.build_eft(prm, 3, 2, seed=4)[1] == eft.build_eft(prm, 3, 2, seed=4)[1]
    with pytest.raises(ValueError, match="training pairs"):
        eft.build_eft(prm, n_train=6, n_test=2, seed=0)


class _Writer:
    """A judgment writer from a function of one shown pair."""

    def __init__(self, fn):
        self.fn = fn

    def write(self, shown):
        return [self.fn(s) for s in shown]

    def describe(self):
        return {"judgments": "teacher", "teacher": "scripted"}


def test_eft_teacher_judgments_and_disagreement_filter(prm):
    right = _Writer(lambda s: f"Checking both steps of '{s.question}': {s.verdict}'s is right. [[{s.verdict}]]")
    train, test, _ = eft.build_eft(prm, 2, 1, seed=0, writer=right)
    assert all(r.judgment.startswith("Checking both steps") for r in train + test)
    stats: dict = {}
    with pytest.raises(ValueError, match="only 0 test pairs"):
        eft.build_eft(prm, 1, 1, seed=0, writer=_Writer(lambda s: "A is better. [[A]]"), stats=stats)


def test_srlm_eft_scores_whole_solutions(prm):
    records = eft.build_srlm_eft(prm, 4, seed=0)
    assert sorted(r.score for r in records) == [1, 1, 5, 5]
    for r in records:
        assert parse_score(r.judgment) == r.score
        steps = split_steps(r.response)
        if r.score == 5:
            assert is_final(steps[-1])
    lows = {r.question: r for r in eft.build_srlm_eft(prm, 6, seed=0) if r.score == 1}
    # phase 2: the whole pre-generated solution, the error located at its step
    divisors = lows["How many positive divisors does $12$ have?"]
    assert split_steps(divisors.response)[-1] == "The answer is $\\boxed{5}$." and "Step 3 " in divisors.judgment
    assert "Step 1 " in lows["What is $100 - 37$?"].judgment
    kept = eft.build_srlm_eft(prm, 2, seed=0, exclude={"What is $9 \\cdot 9$?", "What is $100 - 37$?"})
    assert all(r.question not in ("What is $9 \\cdot 9$?", "What is $100 - 37$?") for r in kept)
    with pytest.raises(ValueError, match="SRLM EFT"):
        eft.build_srlm_eft(prm, 10, seed=0)


# ------------------------------------------------------------------------------ pools and the task


def test_pools_disjoint_without_gold(cache):
    src = sources.Source(NUMINA, cache)
    used = {rows.normalize_question(r.question) for r in ift.build_ift(src, 3, seed=0)}
    pools = real.build_pools(src, (1, 1, 2), seed=0, exclude=used)
    assert [len(p) for p in pools] == [1, 1, 2]
    flat = [q for pool in pools for q in pool]
    assert all(type(q) is Question for q in flat)
    keys = [rows.normalize_question(q.question) for q in flat]
    assert len(set(keys)) == 4 and not set(keys) & used
    assert all("Prove that" not in q.question for q in flat)
    assert pools == real.build_pools(src, (1, 1, 2), seed=0, exclude=used)
    with pytest.raises(ValueError, match="pools need"):
        real.build_pools(src, (5,), seed=0, exclude=used)


def _fixture_params(**extra):
    overrides = {
        "task.kind": "real", "task.ift_source": NUMINA, "task.eft_source": PRM, "task.question_source": NUMINA,
        "task.n_ift": 3, "task.n_eft": 3, "task.n_eft_test": 2, "task.n_srlm_eft": 2,
        "task.questions_per_iteration": [1, 1, 1], "run.arms": ["psrlm", "srlm"], "eval.benchmark_dir": "",
        "task.eft_judgments": "template",
    }
    overrides.update(extra)
    return load(ROOT / "params" / "tiny.yaml").replace(overrides)


def test_build_real_task_fills_the_task_data_splits(cache, tmp_path, monkeypatch):
    monkeypatch.delenv("PSR_BENCHMARK_DIR", raising=False)
    task = real.build_real_task(_fixture_params(), seed=0, cache_dir=cache)
    names = {f.name for f in dataclasses.fields(TaskData)}
    assert names <= {f.name for f in dataclasses.fields(real.RealTask)}
    assert (len(task.ift), len(task.eft), len(task.eft_test), len(task.srlm_eft)) == (3, 6, 2, 2)
    assert [len(p) for p in task.pools] == [1, 1, 1] and task.test == []
    ift_q = {rows.normalize_question(r.question) for r in task.ift}
    pool_q = [rows.normalize_question(q.question) for p in task.pools for q in p]
    assert len(set(pool_q)) == 3 and not set(pool_q) & ift_q
    test_q = {rows.normalize_question(r.question) for r in task.eft_test}
    assert not test_q & {rows.normalize_question(r.question) for r in task.eft + task.srlm_eft}
    # records survive the project's JSON-lines I/O
    write_jsonl(tmp_path / "eft.jsonl", task.eft)
    assert read_jsonl(tmp_path / "eft.jsonl", EFTRecord) == task.eft
    again = real.build_real_task(_fixture_params(), seed=0, cache_dir=cache)
    assert (again.ift, again.eft, again.eft_test, again.pools) == (task.ift, task.eft, task.eft_test, task.pools)
    only_psrlm = real.build_real_task(_fixture_params(**{"run.arms": ["psrlm"]}), seed=0, cache_dir=cache)
    assert only_psrlm.srlm_eft == []


def test_benchmark_questions_are_kept_out(cache, tmp_path):
    bench = tmp_path / "bench" / "math"
    bench.mkdir(parents=True)
    write_jsonl(bench / "test.jsonl", [{"problem": "What is  $2^5$?", "solution": "$\\boxed{32}$", "level": "", "type": ""},
                                       {"problem": "Compute 1+1.", "solution": "$\\boxed{2}$", "level": "", "type": ""}])
    params = _fixture_params(**{"eval.benchmarks": ["math"], "eval.benchmark_dir": str(tmp_path / "bench"),
                                "task.n_eft": 2})
    task = real.build_real_task(params, seed=0, cache_dir=cache)
    assert task.stats["benchmark_questions_excluded"] == 2 and task.stats["prm_skipped_excluded"] == 1
    assert all(r.question != "What is $2^5$?" for r in task.eft + task.eft_test + task.srlm_eft)


def test_real_task_needs_sources():
    params = load(ROOT / "params" / "tiny.yaml").replace({"task.kind": "real", "run.arms": ["psrlm", "srlm"],
                                                          "task.eft_judgments": "template"})
    with pytest.raises(ValueError, match="task.ift_source is empty"):
        real.build_real_task(params, seed=0)
