"""Shared test fakes and fixtures.

`ScriptedGenerator` is a fake *model*: a deterministic function of the prompt text it receives
(policy prompts -> candidate steps, judge prompts -> a judgment), implementing the generator
interface. It reads prompts the way a model would, so the real prompt-building code is exercised.
Import helpers with `from tests.conftest import ...`; fixtures are found by pytest."""

from __future__ import annotations

import re
from typing import Callable

import pytest

from psr.config import PromptParams
from psr.engines import Sample, cut_at_stop
from psr.policy import Policy
from psr.prompts import Templates
from psr.steps import split_steps

SLOT_A = re.compile(r"\[The Start of Assistant A's Next Reasoning Step\]\n(.*?)\n\[The End of Assistant A's", re.S)
SLOT_B = re.compile(r"\[The Start of Assistant B's Next Reasoning Step\]\n(.*?)\n\[The End of Assistant B's", re.S)
_CONTEXT = re.compile(r"\[Question and Intermediate Reasoning Steps Provided\]\n(.*?)\n+\[The Start of Assistant A", re.S)
_PROBLEM = re.compile(r"Problem: (.*?)\n<\|assistant\|>\n(.*)\Z", re.S)

EOS_MARK = "<eos>"  # a scripted policy ends a text with this to mean "the model emitted EOS"


class Crash(RuntimeError):
    """A simulated kill of the process in the middle of a run."""


class ScriptedGenerator:
    """policy(question, previous_steps, n, seed, visit) -> n generated texts (each like
    "Step k: ...", optionally continuing with "\\nStep k+1: ..." or ending in EOS_MARK);
    judge(question, previous_steps, step_a, step_b) -> judgment text. `visit` counts how often
    this exact policy prompt was seen before (lets a script change its mind on a retry).
    `fail_after`: raise Crash on that call number (a kill mid-run)."""

    def __init__(self, policy: Callable | None = None, judge: Callable | None = None, fail_after: int | None = None):
        self.policy = policy or (lambda q, steps, n, seed, visit: [f"Step {len(steps) + 1}: x{i}" for i in range(n)])
        self.judge = judge or (lambda q, prev, a, b: "[[A]]")
        self.fail_after = fail_after
        self.calls: list[tuple[str, int, int]] = []  # (kind, number of prompts, n)
        self.prompts: list[str] = []
        self.visits: dict[str, int] = {}

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seed):
        if self.fail_after is not None and len(self.calls) + 1 >= self.fail_after:
            raise Crash(f"simulated kill at call {len(self.calls) + 1}")
        self.prompts.extend(prompts)
        kinds = {("judge" if SLOT_A.search(p) else "policy") for p in prompts}
        self.calls.append(("/".join(sorted(kinds)), len(prompts), n))
        out = []
        for p in prompts:
            if SLOT_A.search(p):  # after worked examples (a few-shot prompt), the last comparison is the one asked
                q, prev = _split_context(_last(_CONTEXT, p))
                text = self.judge(q, prev, _last(SLOT_A, p), _last(SLOT_B, p))
                out.append([Sample(text, len(text.split()) + 1, "eos")] * n)
            else:
                m = _PROBLEM.search(p)
                q, prefix = m.group(1), m.group(2)
                steps = split_steps(prefix) if prefix.strip() else []
                visit = self.visits.get(p, 0)
                self.visits[p] = visit + 1
                texts = self.policy(q, steps, n, seed, visit)
                assert len(texts) == n
                out.append([_as_sample(t, stop, max_new_tokens) for t in texts])
        return out


def _last(pattern: re.Pattern, text: str) -> str:
    return pattern.findall(text)[-1]


def _split_context(context: str) -> tuple[str, list[str]]:
    if "\nStep 1: " not in context:
        return context, []
    q, rest = context.split("\n", 1)
    return q, split_steps(rest)


def _as_sample(text: str, stop: str | None, max_new_tokens: int) -> Sample:
    text, stopped = cut_at_stop(text, stop)
    if stopped:
        return Sample(text, len(text.split()) + 1, "stop")
    if text.endswith(EOS_MARK):
        return Sample(text[: -len(EOS_MARK)], len(text.split()) + 1, "eos")
    return Sample(text, max_new_tokens, "length")


@pytest.fixture(scope="module")
def templates():
    return Templates.from_params(PromptParams(style="compact"))


@pytest.fixture
def as_policy(tok, templates) -> Callable[..., Policy]:
    """Wrap a (fake) generator as a Policy with the test module's `tok` and the compact templates."""
    return lambda generator: Policy(generator, tok, templates)
