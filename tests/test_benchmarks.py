"""Tests for psr.tasks.benchmarks and psr.tools.bench_grading.

Hand-written fixtures in the real schema of each Qwen2.5-Math harness file are written to
``tmp_path``; the real files are only read when ``PSR_BENCHMARK_DIR`` points at them (they are
never copied into the repository).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from psr.tools.bench_grading import CROSS_REJECT_MIN, SELF_ACCEPT_MIN, grade_benchmark, main
from psr.tasks.benchmarks import (
    BENCHMARKS,
    BenchmarkFormatError,
    BenchmarkItem,
    available_benchmarks,
    load_benchmark,
    load_benchmark_from_hub,
    load_jsonl_questions,
)

FIXTURE_ROWS: dict[str, list[dict[str, object]]] = {
    "gsm8k": [
        {"question": "Ducks lay 16 eggs...", "answer": "16 - 3 - 4 = <<16-3-4=9>>9\n#### 18", "idx": 0},
        {"question": "A house costs...", "answer": "It is 70,000.\n#### 70,000", "idx": 1},
    ],
    "math": [
        {"problem": "Asymptotes of $y=2/(x^2+x-6)$?", "level": "Level 3", "type": "Algebra",
         "solution": "First $\\boxed{1}$ is wrong; there are $\\boxed{2}$ asymptotes.", "idx": 0},
        {"problem": "Simplify.", "level": "Level 2", "type": "Algebra",
         "solution": "We get $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "idx": 1},
    ],
    "math500": [
        {"problem": "Convert $(0,3)$ to polar.", "solution": "... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"},
        {"problem": "Find $p-q$.", "solution": "...", "answer": "p - q", "subject": "Algebra",
         "level": 5, "unique_id": "test/intermediate_algebra/1994.json"},
    ],
    "gaokao2023en": [
        {"source": "x/01Q.en", "question": "Find $M \\cap N$.", "lang": "en", "answer": "$\\{x|-2\\leq x < 1\\}$"},
        {"source": "x/03Q.en", "question": "Find the value.", "lang": "en", "answer": "-1"},
        {"source": "y", "question": "Saddle points...answers: $\\frac{3}{10}$", "lang": "en", "answer": ""},
    ],
    "olympiadbench": [
        {"id": 1606, "question": "How many moves?", "solution": ["..."], "final_answer": ["2"],
         "context": None, "is_multiple_answer": False, "unit": None, "answer_type": "Numerical",
         "error": None, "subfield": "Combinatorics"},
        {"id": 2000, "question": "Find all pairs.", "solution": ["..."], "final_answer": ["$64,\\frac{1}{4}$"],
         "context": None, "is_multiple_answer": True, "unit": None, "answer_type": "Numerical",
         "error": None, "subfield": "Algebra"},
    ],
    "aime24": [
        {"id": 60, "problem": "Aya walks...", "solution": "...", "answer": "204",
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1"},
        {"id": 61, "problem": "Find the remainder.", "solution": "...", "answer": "033",
         "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_2"},
    ],
    "amc23": [
        {"id": 0, "problem": "Cities A and B...", "question": "Cities A and B...", "answer": 27.0,
         "url": "https://artofproblemsolving.com/wiki/index.php/2023_AMC_12A_Problems/Problem_1"},
        {"id": 1, "problem": "x+y?", "question": "x+y?", "answer": 36.0, "url": "u"},
    ],
    "minerva_math": [
        {"problem": "Image diameter in cm?", "solution": "\\[ s=\\boxed{1.6} \\mathrm{~cm} \\]",
         "type": "Astronomy", "idx": 0},
        {"problem": "Luminosity?", "solution": "$L=\\boxed{4.5e33}$ erg/s", "type": "Astronomy", "idx": 1},
    ],
}

EXPECTED_GOLDS = {
    "gsm8k": ["18", "70000"],
    "math": ["2", "\\frac{\\sqrt{3}}{2}"],
    "math500": ["\\left( 3, \\frac{\\pi}{2} \\right)", "p - q"],
    "gaokao2023en": ["\\{x|-2\\leq x < 1\\}", "-1", ""],
    "olympiadbench": ["2", "64,\\frac{1}{4}"],
    "aime24": ["204", "033"],
    "amc23": ["27", "36"],
    "minerva_math": ["1.6", "4.5e33"],
}


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def fixture_dir(tmp_path: Path) -> Path:
    for name, rows in FIXTURE_ROWS.items():
        write_jsonl(tmp_path / name / "test.jsonl", rows)
    return tmp_path


def test_fixtures_cover_every_benchmark() -> None:
    assert set(FIXTURE_ROWS) == set(BENCHMARKS) == set(EXPECTED_GOLDS)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_load_fixture_golds(fixture_dir: Path, name: str) -> None:
    items = load_benchmark(name, fixture_dir)
    assert [item.gold for item in items] == EXPECTED_GOLDS[name]
    spec = BENCHMARKS[name]
    questions = [row[spec.question_field] for row in FIXTURE_ROWS[name]]
    assert [item.question for item in items] == questions
    assert [item.id for item in items] == [f"{name}-{i}" for i in range(len(items))]


def test_limit_and_available(fixture_dir: Path) -> None:
    assert len(load_benchmark("math", str(fixture_dir), limit=1)) == 1
    assert available_benchmarks(fixture_dir) == list(BENCHMARKS)


def test_item_is_frozen() -> None:
    item = BenchmarkItem("a-0", "q", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.gold = "2"  # type: ignore[misc]


def test_unknown_name_lists_valid_ones(fixture_dir: Path) -> None:
    with pytest.raises(ValueError, match="valid names: gsm8k, math, math500"):
        load_benchmark("gsm9k", fixture_dir)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "aime24" / "test.jsonl")):
        load_benchmark("aime24", tmp_path)


@pytest.mark.parametrize(
    ("name", "bad_row", "field"),
    [
        ("gsm8k", {"answer": "#### 3"}, "question"),
        ("gsm8k", {"question": "q", "answer": "no marker"}, "answer"),
        ("math", {"problem": "p"}, "solution"),
        ("math", {"problem": "p", "solution": "no box"}, "solution"),
        ("olympiadbench", {"question": "q", "final_answer": "2"}, "final_answer"),
        ("amc23", {"question": "q", "answer": None}, "answer"),
    ],
)
def test_bad_row_names_file_line_and_field(
    tmp_path: Path, name: str, bad_row: dict[str, object], field: str
) -> None:
    path = write_jsonl(tmp_path / name / "test.jsonl", [FIXTURE_ROWS[name][0], bad_row])
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:2: .*'{field}'"):
        load_benchmark(name, tmp_path)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "aime24" / "test.jsonl"
    write_jsonl(path, FIXTURE_ROWS["aime24"])
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n{not json\n")
    with pytest.raises(BenchmarkFormatError, match=rf"{path}:4: not valid JSON"):
        load_benchmark("aime24", tmp_path)
    assert issubclass(BenchmarkFormatError, ValueError)


def test_load_jsonl_questions_for_other_pools(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"q": "1+1?", "a": "$2$"}])
    assert load_jsonl_questions(path, "q", "a") == [BenchmarkItem("train-0", "1+1?", "2")]


def test_hub_loader_is_defined_for_every_benchmark() -> None:
    assert callable(load_benchmark_from_hub)
    for spec in BENCHMARKS.values():
        hub = spec.hub
        assert hub.path and hub.split and hub.question_field and hub.answer_field


def test_bench_grading_on_fixtures(fixture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--benchmark-dir", str(fixture_dir), "--benchmarks", "gsm8k", "aime24", "amc23"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "self-accept" in out and "cross-reject" in out
    assert out.count("100.00%") == 6


def test_bench_grading_reports_empty_gold(fixture_dir: Path) -> None:
    report = grade_benchmark("gaokao2023en", load_benchmark("gaokao2023en", fixture_dir))
    assert report.empty_golds == 1 and report.self_accept == 1.0
    assert any("empty gold" in line for line in report.failures)


# --- the real files, when the environment points at them --------------------------------------

REAL_DIR = os.environ.get("PSR_BENCHMARK_DIR")
# Cross pairs graded per benchmark (evenly spaced): all of them where golds are plain numbers
# (cheap), a sample where most pairs need the symbolic worker; self-accept always covers all rows.
CROSS_SAMPLE = {"math": 100, "math500": 60, "gaokao2023en": 60, "olympiadbench": 50, "minerva_math": 20}


@pytest.mark.skipif(not REAL_DIR, reason="PSR_BENCHMARK_DIR is not set")
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_real_benchmark_golds_grade_consistently(name: str) -> None:
    """Every gold is accepted when boxed (all rows), and other rows' golds are rejected (sample)."""
    assert REAL_DIR is not None
    items = load_benchmark(name, REAL_DIR)
    assert len(items) == BENCHMARKS[name].size
    report = grade_benchmark(name, items, cross_sample=CROSS_SAMPLE.get(name))
    assert report.self_accept >= SELF_ACCEPT_MIN, report.failures
    assert report.cross_reject >= CROSS_REJECT_MIN, report.failures
