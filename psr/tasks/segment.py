"""The paper's LLM step segmentation (Figure 3's format) by a local model, with a check that the
model only split the solution; not wired into the task builders yet (they segment by rule, see
`psr.tasks.ift`), for whoever has a strong local model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from psr.config import ModelParams
from psr.models import load_policy
from psr.prompts import chat_prompt
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


def llm_segment(
    records: Sequence[RawSolution],
    model_dir: str | Path,
    model_params=None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
) -> tuple[list[IFTRecord], list[str]]:
    """The paper's segmentation (Figure 3 format) by a local HF model, greedy. Returns the IFT
    records and the ids that fell back to `rule_segment` because the model's output was not a
    faithful split (the paper's o1 was told not to alter content; we check that it did not)."""
    import torch


    model, tok = load_policy(model_dir, model_params or ModelParams())
    tok.padding_side = "left"
    out: list[IFTRecord] = []
    fallbacks: list[str] = []
    for start in range(0, len(records), batch_size):
        batch = list(records[start:start + batch_size])
        prompts = [chat_prompt(tok, SEGMENT_PROMPT.format(question=r.question, solution=r.solution)) for r in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        budget = max_new_tokens or max(
            int(1.3 * len(tok(r.solution, add_special_tokens=False)["input_ids"])) + 64 for r in batch
        )
        with torch.no_grad():
            generated = model.generate(
                **enc, do_sample=False, max_new_tokens=budget,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(generated[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for raw, text in zip(batch, texts):
            steps = accept_segmentation(text, raw.solution)
            if steps is None:
                fallbacks.append(raw.id)
                out.append(rule_segment(raw))
            else:
                out.append(IFTRecord(id=raw.id, question=raw.question, steps=steps))
    return out, fallbacks
