"""Training texts from records (the layout contract of `psr.prompts`/`psr.steps`):

- policy SFT: prompt = chat_prompt(reasoning_prompt(q)), completion = join_steps(steps) + EOS
- judge SFT:  prompt = chat_prompt(judge_prompt(q, prev, a, b)), completion = judgment + EOS
- step DPO:   prompt = chat_prompt(reasoning_prompt(q)) + prefix_text(prev),
              chosen/rejected = "Step k: content" + ("\\n" if the step is not final else EOS)

EOS is written into the text here, where it belongs; `psr.train.trainers` makes TRL respect it.
"""

from __future__ import annotations

from typing import Sequence

from psr.prompts import Templates, chat_prompt
from psr.records import EFTRecord, IFTRecord, PPDPair, SolutionPair, SRLMEFTRecord
from psr.steps import join_steps, prefix_text, render_step


def _eos(tokenizer) -> str:
    if not tokenizer.eos_token:
        raise ValueError("tokenizer has no eos_token; the SFT/DPO targets need one to mark the end")
    return tokenizer.eos_token


def _policy_examples(ift: Sequence[IFTRecord], templates: Templates, tokenizer) -> list[dict[str, str]]:
    eos = _eos(tokenizer)
    out = []
    for r in ift:
        if not r.steps:
            raise ValueError(f"IFT record {r.id!r} has no steps")
        out.append(
            {"prompt": chat_prompt(tokenizer, templates.reasoning_prompt(r.question)), "completion": join_steps(r.steps) + eos}
        )
    return out


def sft_examples(
    ift: Sequence[IFTRecord], eft: Sequence[EFTRecord], templates: Templates, tokenizer
) -> list[dict[str, str]]:
    """The warm-up mix: policy examples from IFT, then step-judge examples from EFT."""
    eos = _eos(tokenizer)
    out = _policy_examples(ift, templates, tokenizer)
    for r in eft:
        prompt = templates.judge_prompt(r.question, list(r.previous_steps), r.step_a, r.step_b)
        out.append({"prompt": chat_prompt(tokenizer, prompt), "completion": r.judgment + eos})
    return out


def srlm_sft_examples(
    ift: Sequence[IFTRecord], srlm_eft: Sequence[SRLMEFTRecord], templates: Templates, tokenizer
) -> list[dict[str, str]]:
    """The SRLM baseline's warm-up mix: IFT plus whole-solution 1-5 scoring examples."""
    eos = _eos(tokenizer)
    out = _policy_examples(ift, templates, tokenizer)
    for r in srlm_eft:
        prompt = templates.srlm_prompt(r.question, r.response)
        out.append({"prompt": chat_prompt(tokenizer, prompt), "completion": r.judgment + eos})
    return out


def step_dpo_examples(pairs: Sequence[PPDPair], templates: Templates, tokenizer) -> list[dict[str, str]]:
    """One example per step pair: the prompt is the question plus the earlier steps, chosen and
    rejected are single steps numbered k = len(previous_steps) + 1; only a final step ends in EOS."""
    eos = _eos(tokenizer)
    out = []
    for p in pairs:
        k = len(p.previous_steps) + 1
        prompt = chat_prompt(tokenizer, templates.reasoning_prompt(p.question)) + prefix_text(list(p.previous_steps))
        out.append(
            {
                "prompt": prompt,
                "chosen": render_step(k, p.chosen) + (eos if p.is_final else "\n"),
                "rejected": render_step(k, p.rejected) + (eos if p.rejected_is_final else "\n"),
            }
        )
    return out


def solution_dpo_examples(pairs: Sequence[SolutionPair], templates: Templates, tokenizer) -> list[dict[str, str]]:
    """The SRLM arm: whole solutions, which always end in EOS."""
    eos = _eos(tokenizer)
    return [
        {
            "prompt": chat_prompt(tokenizer, templates.reasoning_prompt(p.question)),
            "chosen": p.chosen + eos,
            "rejected": p.rejected + eos,
        }
        for p in pairs
    ]


def boundary_merges(examples: Sequence[dict[str, str]], tokenizer) -> list[int]:
    """Indices of examples whose prompt's tokens are not a prefix of prompt+completion's tokens,
    i.e. a token merges across the boundary (TRL then silently moves the boundary into the
    prompt). Our layout ends every prompt in a newline so this stays empty; notebooks can check."""
    bad = []
    for i, ex in enumerate(examples):
        prompt_ids = tokenizer(ex["prompt"])["input_ids"]
        for key in ("completion", "chosen", "rejected"):
            if key in ex:
                full = tokenizer(ex["prompt"] + ex[key])["input_ids"]
                if full[: len(prompt_ids)] != prompt_ids:
                    bad.append(i)
                    break
    return bad
