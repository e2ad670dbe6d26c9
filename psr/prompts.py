"""Prompt templates for the three roles (policy, pairwise step judge, SRLM scorer) and verdict parsing.

The wording is ours; the *format* is the paper's (Appendix C): `Step n: ` steps with the answer in
`\\boxed{}`, the judge's section markers around the question+partial steps and each assistant's
next step, a verdict `[[A]]`/`[[B]]` after an explanation, and `Score: N` for SRLM. A preset may
replace any template (`prompts.judge: file:my_judge.txt`) to run the paper's exact text. The
`compact` style keeps every marker but shortens the instructions, for the tiny preset whose
context is short. M0, never taught the judge's format, is judged with worked examples before
the pair (`Templates.few_shot_judge_prompt`, our wording around the judge template).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from psr.records import EFTRecord
from psr.steps import prefix_text

Verdict = Literal["A", "B"]

PAPER_REASONING = (
    "Solve the math problem below step by step. Begin every step with \"Step n: \", where n counts "
    "the steps from 1 upwards, and write the final answer in \\boxed{{}}.\n\n"
    "Problem: {question}"
)

PAPER_JUDGE = (
    "You are an impartial judge. Two AI assistants each propose the next reasoning step for the "
    "question and partial solution below. Judge which next step is better, considering correctness "
    "first and then helpfulness. Explain your comparison in detail before deciding. The order in "
    "which the steps appear, their length and the assistants' names must not affect your decision. "
    "After the explanation, give the verdict in exactly this format: \"[[A]]\" if assistant A's "
    "step is better, \"[[B]]\" if assistant B's step is better.\n\n"
    "[Question and Intermediate Reasoning Steps Provided]\n{context}\n\n"
    "[The Start of Assistant A's Next Reasoning Step]\n{step_a}\n"
    "[The End of Assistant A's Next Reasoning Step]\n\n"
    "[The Start of Assistant B's Next Reasoning Step]\n{step_b}\n"
    "[The End of Assistant B's Next Reasoning Step]"
)

PAPER_SRLM = (
    "Rate the response to the user's question on an additive 5-point scale. Add 1 point if the "
    "response is relevant to the question, even if incomplete. Add a 2nd point if it addresses a "
    "substantial part of the question without fully resolving it. Add a 3rd point if it answers the "
    "basic elements of the question usefully. Add a 4th point if it answers the question directly "
    "and completely, well organised, with at most slight room for improvement. Add a 5th point if "
    "it is flawless, expert and exactly tailored to the question.\n"
    "User: {question}\n<response>{response}</response>\n"
    "Justify the total briefly (at most 100 words), then end with \"Score: <total points>\"."
)

COMPACT_REASONING = "Solve step by step. Put the answer in \\boxed{{}}.\nProblem: {question}"

COMPACT_JUDGE = (
    "Which next step is better? Check both, answer [[A]] or [[B]].\n"
    "[Question and Intermediate Reasoning Steps Provided]\n{context}\n"
    "[The Start of Assistant A's Next Reasoning Step]\n{step_a}\n"
    "[The End of Assistant A's Next Reasoning Step]\n"
    "[The Start of Assistant B's Next Reasoning Step]\n{step_b}\n"
    "[The End of Assistant B's Next Reasoning Step]"
)

COMPACT_SRLM = (
    "Score the response from 1 to 5, end with \"Score: N\".\n"
    "User: {question}\n<response>{response}</response>"
)

# Around the judge template when worked examples come first (M0's judge, paper Table 3's few-shot row).
FEW_SHOT_HEAD = ("Below are {n} comparisons of two next steps, each followed by its judgment. "
                 "Judge the last comparison in the same way.\n\n")
FEW_SHOT_EXAMPLE = "Comparison {i}:\n{prompt}\nJudgment {i}:\n{judgment}\n\n"
FEW_SHOT_LAST = "Comparison {i}:\n{prompt}"

_FIELDS = {
    "reasoning": {"question"},
    "judge": {"context", "step_a", "step_b"},
    "srlm": {"question", "response"},
}
_BUILTIN = {
    "paper": {"reasoning": PAPER_REASONING, "judge": PAPER_JUDGE, "srlm": PAPER_SRLM},
    "compact": {"reasoning": COMPACT_REASONING, "judge": COMPACT_JUDGE, "srlm": COMPACT_SRLM},
}


class TemplateError(ValueError):
    """A template override that lacks a required field or names an unknown one."""


@dataclass(frozen=True)
class Templates:
    reasoning: str
    judge: str
    srlm: str

    @classmethod
    def from_params(cls, prompts, base_dir: str | Path = ".") -> "Templates":
        """Built-in style, with any non-empty override (inline text or `file:path`) applied."""
        chosen = dict(_BUILTIN[prompts.style])
        for role in _FIELDS:
            override = getattr(prompts, role)
            if override:
                text = override
                if override.startswith("file:"):
                    path = Path(base_dir) / override[5:]
                    text = path.read_text()
                _check_fields(role, text)
                chosen[role] = text
        return cls(**chosen)

    @classmethod
    def for_params(cls, params) -> "Templates":
        """The templates of a loaded preset (`file:` overrides are relative to the preset file)."""
        base = Path(params.source).parent if params.source else Path(".")
        return cls.from_params(params.prompts, base)

    def reasoning_prompt(self, question: str) -> str:
        return self.reasoning.format(question=question)

    def judge_prompt(self, question: str, previous_steps: list[str], step_a: str, step_b: str) -> str:
        """Candidates are shown as bare step contents; the context is the question, a newline, then
        the earlier steps one per line (the paper leaves this layout open)."""
        context = question + ("\n" + prefix_text(previous_steps).rstrip("\n") if previous_steps else "")
        return self.judge.format(context=context, step_a=step_a, step_b=step_b)

    def few_shot_judge_prompt(self, shots: Sequence[EFTRecord], question: str, previous_steps: list[str],
                              step_a: str, step_b: str) -> str:
        """The judge prompt for (step_a, step_b) after worked examples: each shot's own judge prompt
        and the judgment it got, then the pair to judge. Without shots, exactly `judge_prompt`."""
        prompt = self.judge_prompt(question, previous_steps, step_a, step_b)
        if not shots:
            return prompt
        examples = "".join(
            FEW_SHOT_EXAMPLE.format(
                i=i, prompt=self.judge_prompt(s.question, list(s.previous_steps), s.step_a, s.step_b), judgment=s.judgment)
            for i, s in enumerate(shots, 1))
        return FEW_SHOT_HEAD.format(n=len(shots)) + examples + FEW_SHOT_LAST.format(i=len(shots) + 1, prompt=prompt)

    def srlm_prompt(self, question: str, response: str) -> str:
        return self.srlm.format(question=question, response=response)


def _check_fields(role: str, text: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    except ValueError as e:
        raise TemplateError(f"{role} template is not a valid format string: {e}") from None
    missing = _FIELDS[role] - names
    unknown = names - _FIELDS[role]
    if missing or unknown:
        raise TemplateError(
            f"{role} template must use exactly the fields {sorted(_FIELDS[role])}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)} (write literal braces as {{{{ }}}})"
        )


def chat_prompt(tokenizer, user_text: str) -> str:
    """The user turn wrapped in the tokenizer's chat template, ending where the assistant speaks."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
    )


_VERDICT = re.compile(r"\[\[([AB])\]\]")
_SCORE = re.compile(r"Score:\s*([0-9]+(?:\.[0-9]+)?)")


def parse_verdict(text: str) -> Verdict | None:
    """The last `[[A]]`/`[[B]]` in the judge's output; None when there is none (never raises)."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None  # type: ignore[return-value]


def parse_score(text: str) -> float | None:
    """The last `Score: N` with 1 <= N <= 5; None when missing or out of range."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 5 else None
