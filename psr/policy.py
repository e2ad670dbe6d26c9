"""The policy as every role sees it: one model that writes steps, judges them and scores solutions.

The paper's method is *self*-rewarding: the same generator, tokenizer and prompt templates serve
generation, pairwise judging and solution scoring, so they travel together as one `Policy`. What
differs per use (search width, judge decoding, SRLM repeats) stays an explicit argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psr.engines import Generator
from psr.prompts import Templates, chat_prompt


@dataclass(frozen=True)
class Policy:
    """`generator` samples from the model; `tokenizer` supplies its chat template; `templates`
    are the role prompts (reasoning, judge, SRLM scoring)."""

    generator: Generator
    tokenizer: Any
    templates: Templates

    def chat(self, text: str) -> str:
        """A user turn in the model's chat template, ending where the assistant speaks."""
        return chat_prompt(self.tokenizer, text)
