"""Evaluation benchmarks of the paper (GSM8K, MATH, Gaokao2023En, OlympiadBench, AIME24, AMC23)
plus MATH-500 and Minerva-MATH, as ``BenchmarkItem(id, question, gold)`` records.

Local files use the Qwen2.5-Math harness layout ``<data_dir>/<name>/test.jsonl``, so a machine
without hub access can evaluate from a folder it is given (the project never copies the files).
Gold answers are derived the way the harness's ``parse_ground_truth`` does, so that
``psr.grading.is_equiv(prediction, item.gold)`` reproduces its accuracy. ``load_benchmark_from_hub``
builds the same records from the Hugging Face hub for machines that can reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psr.grading import extract_answer
from psr.io import RecordError, jsonl_rows

Row = Mapping[str, Any]


@dataclass(frozen=True)
class BenchmarkItem:
    """One test question and its gold answer (a LaTeX string, ready for ``is_equiv``)."""

    id: str
    question: str
    gold: str


class BenchmarkFormatError(RecordError):
    """A benchmark file row that is not JSON or lacks a usable question or answer field."""


# ---------------------------------------------------------------------------------------------
# Gold answers, as the harness's parse_ground_truth derives them
# ---------------------------------------------------------------------------------------------


def gsm8k_gold(answer: Any) -> str:
    """Text after ``####`` in a GSM8K worked solution, thousands commas removed."""
    text = _require_str(answer)
    if "####" not in text:
        raise ValueError("no '####' final-answer marker")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def boxed_gold(solution: Any) -> str:
    """The last ``\\boxed{}`` of a MATH / Minerva solution."""
    boxed = extract_answer(_require_str(solution))
    if boxed is None:
        raise ValueError("no \\boxed{} answer in the solution")
    return boxed


def latex_gold(answer: Any) -> str:
    """A LaTeX answer without its ``$...$`` delimiters (Gaokao writes ``$\\frac58$``).

    It may be empty: two Gaokao2023En rows have ``"answer": ""``. The harness keeps them (its
    385-row denominator is what the paper reports), and no prediction matches an empty gold.
    """
    return _strip_math_delimiters(_require_str(answer))


def olympiad_gold(final_answer: Any) -> str:
    """OlympiadBench's ``final_answer`` list, delimiters stripped, joined with ", "."""
    if not isinstance(final_answer, list) or not final_answer:
        raise ValueError("expected a non-empty list of answers")
    return ", ".join(latex_gold(part) for part in final_answer)


def number_gold(answer: Any) -> str:
    """An integer-valued number as an integer string (AMC stores ``27.0``; AIME ``"033"``)."""
    if isinstance(answer, bool):
        raise ValueError(f"expected a number, got {answer!r}")
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    if isinstance(answer, (int, float)):
        return str(answer)
    return latex_gold(answer)


def _require_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _strip_math_delimiters(text: str) -> str:
    """Remove unescaped ``$`` (an escaped ``\\$`` is a currency sign and stays)."""
    out = []
    for index, char in enumerate(text):
        if char != "$" or (index > 0 and text[index - 1] == "\\"):
            out.append(char)
    return "".join(out).strip()


# ---------------------------------------------------------------------------------------------
# Specifications
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face hub and how its rows read."""

    path: str
    split: str
    question_field: str
    answer_field: str
    gold: Callable[[Any], str]
    configs: tuple[str | None, ...] = (None,)
    url_contains: str | None = None  # keep rows whose "url" has this (AI-MO sets span years)


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark's local file layout (Qwen2.5-Math harness) and its hub source."""

    question_field: str
    answer_field: str
    gold: Callable[[Any], str]
    hub: HubSource
    size: int  # rows in the harness's file, as the paper's accuracies imply


_MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec(
        "question",
        "answer",
        gsm8k_gold,
        HubSource("openai/gsm8k", "test", "question", "answer", gsm8k_gold, ("main",)),
        1319,
    ),
    "math": BenchmarkSpec(
        "problem",
        "solution",
        boxed_gold,
        HubSource(
            "EleutherAI/hendrycks_math", "test", "problem", "solution", boxed_gold, _MATH_SUBJECTS
        ),
        5000,
    ),
    "math500": BenchmarkSpec(
        "problem",
        "answer",
        latex_gold,
        HubSource("HuggingFaceH4/MATH-500", "test", "problem", "answer", latex_gold),
        500,
    ),
    "gaokao2023en": BenchmarkSpec(
        "question",
        "answer",
        latex_gold,
        HubSource(
            "MARIO-Math-Reasoning/Gaokao2023-Math-En", "train", "question", "answer", latex_gold
        ),
        385,
    ),
    "olympiadbench": BenchmarkSpec(
        "question",
        "final_answer",
        olympiad_gold,
        HubSource(
            "Hothan/OlympiadBench",
            "train",
            "question",
            "final_answer",
            olympiad_gold,
            ("OE_TO_maths_en_COMP",),
        ),
        675,
    ),
    "aime24": BenchmarkSpec(
        "problem",
        "answer",
        number_gold,
        HubSource(
            "AI-MO/aimo-validation-aime",
            "train",
            "problem",
            "answer",
            number_gold,
            url_contains="2024_AIME",
        ),
        30,
    ),
    "amc23": BenchmarkSpec(
        "question",
        "answer",
        number_gold,
        HubSource(
            "AI-MO/aimo-validation-amc",
            "train",
            "problem",
            "answer",
            number_gold,
            url_contains="2023_AMC",
        ),
        40,
    ),
    "minerva_math": BenchmarkSpec(
        "problem",
        "solution",
        boxed_gold,
        HubSource("math-ai/minervamath", "test", "question", "answer", latex_gold),
        272,
    ),
}
"""Benchmark name (the harness's folder name) -> specification."""


def benchmark_spec(name: str) -> BenchmarkSpec:
    """The spec for ``name``; ValueError listing the valid names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        valid = ", ".join(BENCHMARKS)
        raise ValueError(f"unknown benchmark {name!r}; valid names: {valid}") from None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_benchmark(
    name: str, data_dir: str | Path, limit: int | None = None
) -> list[BenchmarkItem]:
    """Read ``<data_dir>/<name>/test.jsonl`` (first ``limit`` rows if given)."""
    spec = benchmark_spec(name)
    path = Path(data_dir) / name / "test.jsonl"
    return load_jsonl_questions(
        path, spec.question_field, spec.answer_field, gold=spec.gold, id_prefix=name, limit=limit
    )


def load_jsonl_questions(
    path: str | Path,
    question_field: str,
    answer_field: str,
    gold: Callable[[Any], str] = latex_gold,
    id_prefix: str | None = None,
    limit: int | None = None,
) -> list[BenchmarkItem]:
    """Items from any JSON-lines file of questions; also fits training pools in the same layout.

    Item ids are ``<id_prefix>-<row index>`` (``id_prefix`` defaults to the file's stem). A bad row
    raises ``BenchmarkFormatError`` naming the file, its 1-based line and the field.
    """
    path = Path(path)
    prefix = id_prefix if id_prefix is not None else path.stem
    items: list[BenchmarkItem] = []
    for location, row in _rows(path):
        if limit is not None and len(items) >= limit:
            break
        question = _field(row, question_field, location)
        if not isinstance(question, str) or not question.strip():
            raise BenchmarkFormatError(
                f"{location}: field {question_field!r} is not a non-empty string"
            )
        answer = _gold_from_field(row, answer_field, gold, location)
        items.append(BenchmarkItem(f"{prefix}-{len(items)}", question, answer))
    return items


def _rows(path: Path) -> Iterator[tuple[str, Row]]:
    """(`file:line`, object) per non-blank line, read lazily; every line must parse (a
    benchmark file is never appended to, so a torn last line is an error too)."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    try:
        yield from jsonl_rows(path, drop_torn_tail=False)
    except RecordError as error:
        raise BenchmarkFormatError(str(error)) from None


def _field(row: Row, field: str, location: str) -> Any:
    if row.get(field) is None:
        raise BenchmarkFormatError(f"{location}: missing field {field!r}")
    return row[field]


def _gold_from_field(row: Row, field: str, gold: Callable[[Any], str], location: str) -> str:
    try:
        return gold(_field(row, field, location))
    except BenchmarkFormatError:
        raise
    except ValueError as error:
        raise BenchmarkFormatError(f"{location}: field {field!r}: {error}") from None


def available_benchmarks(data_dir: str | Path) -> list[str]:
    """Names in ``BENCHMARKS`` whose ``test.jsonl`` exists under ``data_dir``."""
    return [name for name in BENCHMARKS if (Path(data_dir) / name / "test.jsonl").is_file()]


def load_benchmark_from_hub(name: str, limit: int | None = None) -> list[BenchmarkItem]:
    """The same records from the Hugging Face hub (needs network access and ``datasets``)."""
    from datasets import load_dataset

    source = benchmark_spec(name).hub
    items: list[BenchmarkItem] = []
    for config in source.configs:
        for index, row in enumerate(load_dataset(source.path, config, split=source.split)):
            if limit is not None and len(items) >= limit:
                return items
            if source.url_contains and source.url_contains not in str(row.get("url", "")):
                continue
            location = f"hub:{source.path}[{config or 'default'}/{source.split}]#{index}"
            question = _field(row, source.question_field, location)
            answer = _gold_from_field(row, source.answer_field, source.gold, location)
            items.append(BenchmarkItem(f"{name}-{len(items)}", str(question), answer))
    return items
