"""The paper's LLM step segmentation (Figure 3's format) by a local teacher model
(`task.segmenter: model`), with a check that the model only split the solution: where its output
is not a faithful `Step n:` split of the original text, the solution is segmented by rule
(`psr.tasks.ift.rule_segment`) instead, and the fallback is counted.
"""

from __future__ import annotations

import re
from typing import Sequence

from psr.policy import Policy
from psr.records import IFTRecord
from psr.steps import STOP_STRING, StepFormatError, is_final, split_steps
from psr.tasks.ift import merge_after_first_final, rule_segment
from psr.tasks.rows import RawSolution

SEGMENT_PROMPT = (
    "Below are a math problem and a worked solution to it. Split the solution into its logical "
    "steps. Start every step with \"Step n: \", where n is the step number, counting from 1. Do "
    "not change, add or remove anything in the solution: only split it. Keep the final answer, "
    "which is written in \\boxed{{}}. Output the steps in this format and nothing else.\n\n"
    "[The Start of Question Provided]\n{question}\n[The End of Question Provided]\n\n"
    "[The Start of Solution Provided]\n{solution}\n[The End of Solution Provided]"
)


def _content_key(text: str) -> str:
    return re.sub(r"\s+", "", text)


def accept_segmentation(output: str, solution: str) -> list[str] | None:
    """The steps of an LLM segmentation, or None when it is not a faithful `Step n:` split of
    `solution` (lost or changed content, text outside steps, a step holding a stop marker)."""
    try:
        steps = split_steps(output.strip())
    except StepFormatError:
        return None
    if any(not s or STOP_STRING in s for s in steps):
        return None
    if _content_key("".join(steps)) != _content_key(solution):
        return None
    steps = merge_after_first_final(steps)
    return steps if is_final(steps[-1]) else None


def segment_budget(tokenizer, solutions: Sequence[str]) -> int:
    """New tokens for a split of the longest solution: its tokens, 30% more for the `Step n:`
    markers and line breaks, plus a margin."""
    return max(int(1.3 * len(tokenizer(s, add_special_tokens=False)["input_ids"])) + 64 for s in solutions)


def llm_segment(
    records: Sequence[RawSolution], teacher: Policy, batch_size: int = 64,
    max_new_tokens: int | None = None, seed: int = 0,
) -> tuple[list[IFTRecord], list[str]]:
    """The paper's segmentation (Figure 3 format) by `teacher`, greedily, `batch_size` solutions
    per generator call (each call's token budget fits its longest solution unless
    `max_new_tokens` is given). Returns the IFT records and the ids that fell back to
    `rule_segment` because the model's output was not a faithful split (the paper's o1 was told
    not to alter content; we check that it did not)."""
    out: list[IFTRecord] = []
    fallbacks: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = list(records[start:start + batch_size])
        prompts = [teacher.chat(SEGMENT_PROMPT.format(question=r.question, solution=r.solution)) for r in batch]
        budget = max_new_tokens or segment_budget(teacher.tokenizer, [r.solution for r in batch])
        outputs = teacher.generator.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=budget,
                                             stop=None, seed=seed)
        for raw, samples in zip(batch, outputs):
            steps = accept_segmentation(samples[0].text, raw.solution)
            if steps is None:
                fallbacks.append(raw.id)
                out.append(rule_segment(raw))
            else:
                out.append(IFTRecord(id=raw.id, question=raw.question, steps=steps))
    return out, fallbacks
