"""Reading and checking one source row of each schema the real-data task knows.

Schemas are recognised by field names: `problem` + `solution` (NuminaMath-CoT, MATH train),
`question` + `answer` with `#### N` (GSM8K train); PRM800K lines with `question.problem` and
`label.steps[].completions[] {text, rating, flagged}`, `chosen_completion`, `human_completion`.

A row that does not fit raises `psr.io.RecordError` naming its location (`file:line`, or
`file: row N`) and the field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from psr.io import RecordError
from psr.steps import STEP_MARKER, STOP_STRING

def normalize_question(text: str) -> str:
    """The key under which two questions count as the same (whitespace-insensitive)."""
    return " ".join(text.split())


def short_hash(*parts: str) -> str:
    """A 12-hex-digit id from text parts (row ids and pair keys)."""
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:12]


def require_str(row: dict, name: str, where: str, label: str | None = None) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if value is None else f"got {type(value).__name__} {str(value)[:40]!r}"
        raise RecordError(f"{where}: field {label or name!r} must be a non-empty string ({got})")
    return value


# ============================================================================ worked solutions (IFT)


@dataclass
class RawSolution:
    """A question with a worked solution as the source wrote it (after format normalisation)."""
    id: str
    question: str
    solution: str


_GSM8K_CALC = re.compile(r"<<[^<>]*>>")
_GSM8K_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def solution_schema(columns: set[str]) -> str:
    """'problem' (NuminaMath-CoT, MATH: problem + solution) or 'gsm8k' (question + answer)."""
    if {"problem", "solution"} <= columns:
        return "problem"
    if {"question", "answer"} <= columns:
        return "gsm8k"
    raise ValueError(
        f"unrecognised solution schema with fields {sorted(columns)}: expected problem+solution "
        "(NuminaMath-CoT, MATH) or question+answer (GSM8K)"
    )


def read_solution_row(row: dict, where: str, schema: str) -> RawSolution:
    """One source row as a `RawSolution`; RecordError naming the field when it is unusable."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    if schema == "problem":
        question = require_str(row, "problem", where)
        solution = require_str(row, "solution", where).strip()
    else:
        question = require_str(row, "question", where)
        answer = require_str(row, "answer", where)
        m = _GSM8K_FINAL.search(answer)
        if not m:
            raise RecordError(f"{where}: field 'answer' has no final '#### N' line")
        body = _GSM8K_CALC.sub("", answer[: m.start()]).rstrip()
        final = m.group(1).replace(",", "")
        solution = f"{body}\nThe answer is \\boxed{{{final}}}.".strip()
    return RawSolution(id=f"ift-{short_hash(normalize_question(question))}", question=question.strip(), solution=solution)


# ============================================================================ PRM800K


@dataclass
class Completion:
    text: str
    rating: int | None
    flagged: bool


@dataclass
class PRMStep:
    completions: list[Completion]
    chosen: int | None
    human: str | None

    @property
    def taken(self) -> Completion | None:
        """The step the labeller continued with (a human completion counts as correct)."""
        if self.chosen is not None:
            return self.completions[self.chosen]
        if self.human is not None:
            return Completion(self.human, 1, False)
        return None


@dataclass
class PRMSolution:
    where: str
    problem: str
    steps: list[PRMStep]
    finish_reason: str
    pre_generated_steps: list[str] | None = None


def read_prm_row(row: dict, where: str) -> PRMSolution:
    """One PRM800K line (phase 1 or 2), checked field by field."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, dict):
        raise RecordError(f"{where}: field 'question' must be an object with 'problem'")
    problem = require_str(question, "problem", where, "question.problem")
    pre = question.get("pre_generated_steps")
    if pre is not None and not (isinstance(pre, list) and all(isinstance(s, str) for s in pre)):
        raise RecordError(f"{where}: field 'question.pre_generated_steps' must be a list of strings")
    label = row.get("label")
    if not isinstance(label, dict):
        raise RecordError(f"{where}: field 'label' must be an object with 'steps'")
    raw_steps = label.get("steps")
    if not isinstance(raw_steps, list):
        raise RecordError(f"{where}: field 'label.steps' must be a list")
    finish = label.get("finish_reason")
    if not isinstance(finish, str):
        raise RecordError(f"{where}: field 'label.finish_reason' must be a string")
    steps = []
    for i, step in enumerate(raw_steps):
        name = f"label.steps[{i}]"
        if not isinstance(step, dict):
            raise RecordError(f"{where}: field {name!r} must be an object")
        comps = step.get("completions")
        if not isinstance(comps, list):
            raise RecordError(f"{where}: field '{name}.completions' must be a list")
        completions = []
        for j, c in enumerate(comps):
            cname = f"{name}.completions[{j}]"
            if not isinstance(c, dict):
                raise RecordError(f"{where}: field {cname!r} must be an object")
            if not isinstance(c.get("text"), str):
                raise RecordError(f"{where}: field '{cname}.text' must be a string")
            rating = c.get("rating")
            if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
                raise RecordError(f"{where}: field '{cname}.rating' must be -1, 0, 1 or null (got {rating!r})")
            flagged = c.get("flagged")
            if flagged is not None and not isinstance(flagged, bool):
                raise RecordError(f"{where}: field '{cname}.flagged' must be true, false or null")
            completions.append(Completion(c["text"], rating, bool(flagged)))
        chosen = step.get("chosen_completion")
        if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int)
                                   or not 0 <= chosen < len(completions)):
            raise RecordError(f"{where}: field '{name}.chosen_completion' must index completions or be null "
                              f"(got {chosen!r}, {len(completions)} completions)")
        human = step.get("human_completion")
        if isinstance(human, dict):
            human = human.get("text")
        if human is not None and not isinstance(human, str):
            raise RecordError(f"{where}: field '{name}.human_completion' must be null, a string or have 'text'")
        steps.append(PRMStep(completions, chosen, human or None))
    return PRMSolution(where, problem.strip(), steps, finish, pre)


_PRM_ANSWER = re.compile(r"\s*#\s*Answer\s*\n+(.+?)\s*$", re.DOTALL)


def prm_step_text(text: str) -> str | None:
    """A PRM800K step in our format: its `# Answer\\n\\nX` ending becomes
    `The answer is $\\boxed{X}$.` (our final-step rule); None when unusable (empty, or holding a
    `Step n:` marker that would break the numbering)."""
    text = text.strip()
    m = _PRM_ANSWER.search(text)
    if m:
        before = text[: m.start()].strip()
        answer = "The answer is $\\boxed{" + m.group(1).strip() + "}$."
        text = f"{before}\n{answer}" if before else answer
    if not text or STEP_MARKER.search(text) or STOP_STRING in text:
        return None
    return text


# ============================================================================ questions (pools)


def read_question_row(row: dict, where: str) -> tuple[str, str | None]:
    """(question, solution or None) from a row with `problem` or `question`."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    name = "problem" if "problem" in row and row.get("problem") is not None else "question"
    question = require_str(row, name, where)
    solution = row.get("solution", row.get("answer"))
    return question.strip(), solution if isinstance(solution, str) else None
