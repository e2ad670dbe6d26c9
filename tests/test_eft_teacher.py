"""The teacher model behind the warm-up data (psr.teacher, psr.tasks.eft, psr.tasks.segment,
`psr build-eft`): it writes EFT judgments blind, a pair is kept only when both A/B orders agree
with the human labels, its outputs are cached for resume, the fixed-sentence template is used only
when a preset asks for it, and the data provenance (teacher, kept rate, template share,
segmentation fallbacks) is recorded."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from psr.config import ConfigError, ModelParams, load
from psr.engines import Sample
from psr.io import read_jsonl
from psr.models import build_tiny_model, train_tokenizer
from psr.policy import Policy
from psr.prompts import parse_verdict
from psr.records import EFTRecord
from psr.steps import join_steps
from psr.study.data import prepare_data
from psr.study.layout import layout_for
from psr.tasks import eft, real, rows, segment, sources
from psr.teacher import CachedGenerator, DeferredGenerator
from psr.tools import build_eft as build_eft_tool
from tests.conftest import SLOT_A, SLOT_B, ScriptedGenerator

ROOT = Path(__file__).resolve().parents[1]
PRM = str(ROOT / "tests/fixtures/real/prm800k.jsonl")
NUMINA = str(ROOT / "tests/fixtures/real/numina_cot.jsonl")
SMOL_PRM = str(ROOT / "tests/fixtures/smol/prm800k.jsonl")
SMOL_GSM8K = str(ROOT / "tests/fixtures/smol/gsm8k_train.jsonl")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["Step 1: a b c [[A]] [[B]] \\boxed{1}"] * 5, 300)


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    return eft.read_prm_solutions(sources.Source(PRM, str(tmp_path_factory.mktemp("hf-cache"))))


@pytest.fixture(scope="module")
def goods(prm) -> set[str]:
    """Every step the PRM800K fixture's labellers rated +1 where a -1 alternative exists."""
    return {p.good for sol in prm for p in eft.step_pairs(sol, random.Random(0), pairs_per_step=99)}


def analyst(goods: set[str], wrong_on: str = ""):
    """A teacher that finds the labelled-good step in either slot, except for the step `wrong_on`,
    where it always names slot A (a position bias). It writes on after its verdict."""

    def judge(q, prev, a, b):
        if wrong_on and wrong_on in (a, b):
            return "Both look fine; I pick the first. [[A]]"
        slot = "A" if a in goods else "B"
        return f"Step {slot} is right and the other is not. [[{slot}]] I hope this helps."

    return judge


def teacher_writer(tok, templates, judge) -> tuple[eft.TeacherJudgments, ScriptedGenerator]:
    gen = ScriptedGenerator(judge=judge)
    return eft.TeacherJudgments(Policy(gen, tok, templates), "scripted-teacher", max_new_tokens=64), gen


# ------------------------------------------------------------------------- the consistency filter


def test_a_consistent_teacher_keeps_every_pair_with_its_own_analysis(prm, goods, tok, templates):
    writer, gen = teacher_writer(tok, templates, analyst(goods))
    stats: dict = {}
    train, test, _ = eft.build_eft(prm, 3, 2, seed=0, writer=writer, stats=stats)
    assert len(train) == 6 and len(test) == 2
    for r in train + test:
        assert r.judgment == f"Step {r.verdict} is right and the other is not. [[{r.verdict}]]"  # cut at the verdict
        assert parse_verdict(r.judgment) == r.verdict and r.judgment.endswith(f"[[{r.verdict}]]")
    assert stats["eft_kept_pairs"] == stats["eft_judged_pairs"] == 5
    provenance = eft.eft_provenance(writer, stats, train + test)
    assert provenance["judgments"] == "teacher" and provenance["teacher"] == "scripted-teacher"
    assert (provenance["kept_rate"], provenance["template_share"]) == (100.0, 0.0)
    assert all(kind == "judge" for kind, _, _ in gen.calls)


def test_a_pair_wrong_in_one_order_is_dropped_and_the_next_candidate_taken(prm, goods, tok, templates):
    template_train, template_test, _ = eft.build_eft(prm, 3, 2, seed=0)
    wrong_on = template_train[0].step_a  # the good step of the first training pair
    writer, _ = teacher_writer(tok, templates, analyst(goods, wrong_on=wrong_on))
    stats: dict = {}
    train, test, _ = eft.build_eft(prm, 2, 2, seed=0, writer=writer, stats=stats, batch_pairs=1)
    assert wrong_on not in {r.step_a for r in train + test} | {r.step_b for r in train + test}
    assert len(train) == 4 and [r.id for r in test] == [r.id for r in template_test]
    # good in slot A is "right" by the bias; good in slot B is not
    assert stats["eft_dropped"]["wrong_ba_only"] == 1 and stats["eft_dropped_by_judgment"] == 1
    assert stats["eft_judged_pairs"] == stats["eft_kept_pairs"] + 1


def test_a_position_biased_teacher_keeps_nothing(prm, tok, templates):
    writer, _ = teacher_writer(tok, templates, lambda q, prev, a, b: "The first one. [[A]]")
    with pytest.raises(ValueError, match="only 0 test pairs"):
        eft.build_eft(prm, 1, 1, seed=0, writer=writer)
    stats: dict = {}
    train, test, _ = eft.build_eft(prm, 1, 1, seed=0, writer=writer, stats=stats, allow_short=True)
    assert train == test == []
    assert stats["eft_kept_pairs"] == 0 and stats["eft_dropped"]["wrong_ba_only"] == stats["eft_judged_pairs"] > 0
    assert eft.eft_provenance(writer, stats, train + test)["kept_rate"] == 0.0


def test_the_teacher_never_sees_the_labels(tok, templates):
    writer, gen = teacher_writer(tok, templates, lambda q, prev, a, b: "[[B]]")
    shown = [eft.ShownPair("What is 1+1?", ("One.",), "x = 2", "x = 3", verdict) for verdict in ("A", "B")]
    assert writer.write(shown) == ["[[B]]", "[[B]]"]
    assert len(gen.prompts) == 1  # the two requests differ only in the label: one prompt, decoded once


def test_judgments_end_at_the_last_verdict():
    assert eft.ending_at_verdict(" So [[A]], not [[B]]. Done.\n") == "So [[A]], not [[B]]"
    assert eft.ending_at_verdict("no verdict at all ") == "no verdict at all"


# ------------------------------------------------------------------------- the preset switch


def _params(**extra):
    overrides = {
        "task.kind": "real", "task.ift_source": NUMINA, "task.eft_source": PRM, "task.question_source": NUMINA,
        "task.n_ift": 3, "task.n_eft": 3, "task.n_eft_test": 2, "task.n_srlm_eft": 0,
        "task.questions_per_iteration": [1, 1, 1], "run.arms": ["psrlm"], "eval.benchmark_dir": "",
    }
    return load(ROOT / "params" / "tiny.yaml").replace({**overrides, **extra})


def test_the_template_is_a_fallback_a_preset_must_ask_for():
    with pytest.raises(ConfigError, match=r"task.teacher.name_or_path is required when task.eft_judgments is 'teacher'"):
        _params()
    with pytest.raises(ConfigError, match=r"task.teacher.name_or_path is required when task.segmenter is 'model'"):
        _params(**{"task.eft_judgments": "template", "task.segmenter": "model"})
    assert load(ROOT / "params" / "tiny.yaml").task.eft_judgments == "teacher"  # the default
    params = _params(**{"task.teacher.name_or_path": "some/teacher"})
    assert params.task.needs_teacher
    with pytest.raises(ValueError, match="no teacher model was given"):
        real.build_real_task(params, seed=0)


def test_the_data_manifest_records_who_wrote_the_warm_up_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    params = _params(**{"task.eft_judgments": "template", "run.results_dir": str(tmp_path)})
    data_dir = prepare_data(params, layout_for(params, 0), log=lambda *a: None)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["provenance"]["eft"]["judgments"] == "template"
    assert manifest["provenance"]["eft"]["template_share"] == 100.0
    assert manifest["provenance"]["ift"]["segmenter"] == "rule"


def test_template_judgments_are_recorded_as_such(tmp_path):
    task = real.build_real_task(_params(**{"task.eft_judgments": "template"}), seed=0, cache_dir=str(tmp_path))
    assert task.provenance["eft"]["judgments"] == "template" and task.provenance["eft"]["teacher"] is None
    assert task.provenance["eft"]["template_share"] == 100.0 and task.provenance["eft"]["kept_rate"] == 100.0
    assert task.provenance["ift"] == {"segmenter": "rule", "teacher": None}


class ScriptedTeacher:
    """A fake teacher model for both of its jobs: judge prompts go to `judge` (as in
    ScriptedGenerator); a segmentation prompt is answered by splitting the solution at its
    sentence ends, faithfully unless the question mentions `alter`."""

    def __init__(self, judge, alter: str = ""):
        self.judges = ScriptedGenerator(judge=judge)
        self.alter = alter
        self.segmented = 0

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seed, seeds=None):
        judge = [p for p in prompts if SLOT_A.search(p)]
        judged = iter(self.judges.generate(judge, n=n, temperature=temperature, top_p=top_p,
                                           max_new_tokens=max_new_tokens, stop=stop, seed=seed) if judge else [])
        return [next(judged) if SLOT_A.search(p) else [self._split(p)] * n for p in prompts]

    def _split(self, prompt: str) -> Sample:
        self.segmented += 1
        question = re.search(r"\[The Start of Question Provided\]\n(.*?)\n\[The End", prompt, re.S).group(1)
        solution = re.search(r"\[The Start of Solution Provided\]\n(.*?)\n\[The End", prompt, re.S).group(1)
        steps = [s for s in re.split(r"(?<=\.)\s+", solution.strip()) if s]
        if self.alter and self.alter in question:
            steps[0] = "Let me restate: " + steps[0]
        return Sample(join_steps(steps), 10, "eos")


def test_the_teacher_judges_eft_and_segments_ift_for_the_real_task(tmp_path, goods, tok, templates):
    params = _params(**{"task.teacher.name_or_path": "scripted-teacher", "task.segmenter": "model",
                        "task.teacher.batch_pairs": 2})
    first = real.build_real_task(_params(**{"task.eft_judgments": "template"}), seed=0, cache_dir=str(tmp_path))
    altered = first.ift[0].question
    teacher = ScriptedTeacher(analyst(goods), alter=altered)
    task = real.build_real_task(params, seed=0, teacher=Policy(teacher, tok, templates), cache_dir=str(tmp_path))
    e, i = task.provenance["eft"], task.provenance["ift"]
    assert e["judgments"] == "teacher" and e["teacher"] == "scripted-teacher" and e["template_share"] == 0.0
    assert all(r.judgment.endswith(f"[[{r.verdict}]]") and "is right" in r.judgment for r in task.eft + task.eft_test)
    assert teacher.segmented == 3 and i["segmenter"] == "model" and i["teacher"] == "scripted-teacher"
    assert (i["solutions"], i["segmented_by_model"], i["rule_fallbacks"]) == (3, 2, 1)
    by_question = {r.question: r for r in task.ift}
    assert by_question[altered] == next(r for r in first.ift if r.question == altered)  # fell back to the rule
    for r in task.ift:
        assert "Let me restate" not in join_steps(r.steps)


def test_llm_segment_keeps_faithful_splits_and_counts_fallbacks(tok, templates):
    raws = [rows.RawSolution("a", "Add 2 and 3.", "First $2 + 3 = 5$. So the answer is $\\boxed{5}$."),
            rows.RawSolution("b", "Double 4.", "We get $8$. The answer is $\\boxed{8}$.")]
    teacher = ScriptedTeacher(judge=None, alter="Double")
    records, fallbacks = segment.llm_segment(raws, Policy(teacher, tok, templates), batch_size=1)
    assert records[0].steps == ["First $2 + 3 = 5$.", "So the answer is $\\boxed{5}$."]
    assert fallbacks == ["b"] and records[1] == segment.rule_segment(raws[1])


# ------------------------------------------------------------------------- cache and `psr build-eft`


class Counting:
    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seed, seeds=None):
        self.prompts += prompts
        return [[Sample(f"{p}#{temperature}#{j}", 3, "eos") for j in range(n)] for p in prompts]


def test_the_cache_answers_greedy_prompts_it_has_seen_and_passes_sampling_through(tmp_path):
    path = tmp_path / "cache.jsonl"
    inner = Counting()
    gen = CachedGenerator(inner, path, identity="m")
    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=None, seed=0)
    first = gen.generate(["p", "q", "p"], **greedy)
    assert inner.prompts == ["p", "q"] and first[0] == first[2]
    resumed = CachedGenerator(Counting(), path, identity="m")
    assert resumed.generate(["q", "p"], **greedy) == [first[1], first[0]] and resumed.inner.prompts == []
    assert resumed.generated == 0
    other_model = CachedGenerator(Counting(), path, identity="other")
    other_model.generate(["p"], **greedy)
    assert other_model.inner.prompts == ["p"]
    sampled = gen.generate(["p"], n=2, temperature=0.7, top_p=1.0, max_new_tokens=8, stop=None, seed=0)
    assert len(sampled[0]) == 2 and inner.prompts[-1] == "p"
    assert len(read_jsonl(path)) == 3  # p, q for "m"; p for "other"


def test_a_fully_cached_teacher_is_never_loaded(tmp_path):
    built: list[int] = []

    def build():
        built.append(1)
        return Counting()

    greedy = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=None, seed=0)
    CachedGenerator(DeferredGenerator(build), tmp_path / "c.jsonl", "m").generate(["p"], **greedy)
    assert built == [1]
    CachedGenerator(DeferredGenerator(build), tmp_path / "c.jsonl", "m").generate(["p"], **greedy)
    assert built == [1]


def _tiny_teacher(folder: Path) -> Path:
    text = ["[The Start of Assistant A's Next Reasoning Step] apples pens pages [[A]] [[B]] Step 1: 3 * 4 = 12"] * 4
    tok = train_tokenizer(text, 320, folder)
    params = ModelParams(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=320)
    build_tiny_model(params, tok, seed=0).save_pretrained(folder)
    return folder


def test_psr_build_eft_with_a_random_tiny_teacher_writes_records_and_a_manifest(tmp_path, capsys):
    teacher = _tiny_teacher(tmp_path / "teacher")
    preset = ROOT / "params" / "smol.yaml"
    args = [str(preset), "-p", f"run.results_dir={tmp_path / 'results'}", "-p", f"task.eft_source={SMOL_PRM}",
            "-p", f"task.ift_source={SMOL_GSM8K}", "-p", f"task.question_source={SMOL_GSM8K}",
            "-p", "task.eft_judgments=teacher", "-p", f"task.teacher.name_or_path={teacher}",
            "-p", "task.teacher.dtype=float32", "-p", "task.teacher.max_new_tokens=6", "-p", "eval.benchmark_dir=\"\""]
    status = build_eft_tool.main(args)
    out = tmp_path / "results" / "smol" / "build-eft" / "seed0"
    manifest = json.loads((out / "manifest.json").read_text())
    e = manifest["eft"]
    assert e["judgments"] == "teacher" and e["teacher"] == str(teacher) and e["template_share"] in (0.0, None)
    assert e["pairs_judged"] > 0 and e["kept_rate"] == round(100.0 * e["pairs_kept"] / e["pairs_judged"], 2)
    assert status == (1 if manifest["short"] else 0)
    records = read_jsonl(out / "eft.jsonl", EFTRecord) + read_jsonl(out / "eft_test.jsonl", EFTRecord)
    assert all(parse_verdict(r.judgment) == r.verdict for r in records)  # whatever was kept agrees
    cache = tmp_path / "results" / "smol" / "teacher" / "cache.jsonl"
    assert manifest["teacher_generations"] == len(read_jsonl(cache)) > 0
    assert "kept" in capsys.readouterr().out
    build_eft_tool.main(args)  # again: every judgment comes from the cache
    again = json.loads((out / "manifest.json").read_text())
    assert again["teacher_generations"] == 0 and again["eft"] == e


@pytest.mark.download
@pytest.mark.slow
def test_smol_as_teacher_on_the_prm800k_fixture(tmp_path):
    """The real-model path: SmolLM2-135M-Instruct judges every fixture pair in both orders. An
    untrained 135M model rarely ends in a verdict, so little or nothing is kept; what is kept
    agrees with the labels in both orders."""
    from psr.tools import smol

    try:
        smol.ensure_smol()
    except smol.SmolUnavailable as e:
        pytest.skip(f"SmolLM2 not available here: {e}")
    args = [str(ROOT / "params" / "smol.yaml"), "-p", f"run.results_dir={tmp_path}", "-p", f"task.eft_source={SMOL_PRM}",
            "-p", "task.eft_judgments=teacher", "-p", "task.teacher.name_or_path=smol", "-p", "task.teacher.dtype=float32",
            "-p", "task.teacher.max_new_tokens=32", "-p", "eval.benchmark_dir=\"\""]
    build_eft_tool.main(args)
    manifest = json.loads((tmp_path / "smol" / "build-eft" / "seed0" / "manifest.json").read_text())
    assert manifest["eft"]["teacher"] == "smol" and manifest["eft"]["pairs_judged"] == 8
    assert manifest["teacher_generations"] == 16  # 8 pairs x 2 orders, each prompt distinct
