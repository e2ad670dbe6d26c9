"""On-policy EFT negatives: step-judge training pairs whose wrong step is one the model wrote itself.

The synthetic EFT's wrong steps are corruptions of the right one (`psr.tasks.synthetic.bad_step`);
a judge that learnt them can be blind to the errors the model actually makes, which are the ones
it must tell apart in the search. So a second warm-up phase trains on pairs whose wrong step is a
sample of M1a (the phase-1 model) on the record's own prefix, checked with the task's answer key.

This builds warm-up data only (`psr.study.stages.warmup_stage`); like `psr.diagnostics` it knows
answers, and no module of the loops imports it. A sampled step counts as wrong when the key says
so *and* its claim differs from the right step's: a step that only ends the solution at the
wrong place (a correct equation followed by EOS) reads like the right step to a judge and cannot
be given a judgment.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from psr.answer_key import AnswerKey
from psr.engines import derive_seed
from psr.policy import Policy
from psr.records import EFTRecord
from psr.steps import STOP_STRING, is_final, prefix_text, strip_marker
from psr.tasks.synthetic import claim, eft_judgment

OWN_ERROR = "own"  # `EFTRecord.error` of an on-policy record


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How M1a writes its candidate next steps (the search's candidate settings, its own temperature)."""

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


def right_step(record: EFTRecord) -> str:
    """The record's correct step (the one its verdict names)."""
    return record.step_a if record.verdict == "A" else record.step_b


def replaced_indices(usable: Sequence[int], n: int, share: float, seed: int) -> list[int]:
    """Which records get their on-policy negative: `round(share * n)` of the `usable` ones (those
    whose prefix drew a usable wrong step), or all of them when fewer, reproducible from `seed`."""
    rng = random.Random(f"psr-own-negatives:{seed}")
    return sorted(rng.sample(list(usable), min(round(share * n), len(usable))))


def next_step_prompts(records: Sequence[EFTRecord], policy: Policy) -> list[str]:
    """The policy prompt of each record's prefix, as the step search builds it."""
    return [policy.chat(policy.templates.reasoning_prompt(r.question)) + prefix_text(r.previous_steps)
            for r in records]


def sample_next_steps(records: Sequence[EFTRecord], policy: Policy, sampling: Sampling, *, seed: int
                      ) -> list[list[tuple[str, bool]]]:
    """`sampling.n` (step text, final) candidates per record's prefix, one generate call."""
    samples = policy.generator.generate(
        next_step_prompts(records, policy), n=sampling.n, temperature=sampling.temperature,
        top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, stop=STOP_STRING,
        seed=derive_seed(seed, "own-negatives"),
    )
    out = []
    for row in samples:
        texts = [strip_marker(x.text) for x in row]
        out.append([(t, is_final(t) or x.finish_reason == "eos") for t, x in zip(texts, row)])
    return out


def own_wrong_step(record: EFTRecord, candidates: Sequence[tuple[str, bool]], key: AnswerKey) -> str | None:
    """The first candidate the key calls wrong and a judge can tell from the right step, or None."""
    want = claim(right_step(record))
    for text, final in candidates:
        if text.strip() and claim(text) != want and not key.step_right(record.question, record.previous_steps, text, final):
            return text
    return None


def on_policy_record(record: EFTRecord, wrong: str) -> EFTRecord:
    """`record` with its bad step replaced by `wrong`, in the same verdict slot (so the A/B
    balance of the task's EFT is kept) and with the task's judgment text."""
    good = right_step(record)
    a, b = (good, wrong) if record.verdict == "A" else (wrong, good)
    judgment, verdict = eft_judgment(record.question, record.previous_steps, a, b)
    if verdict != record.verdict:
        raise ValueError(f"{record.id}: the judgment of the on-policy pair names {verdict}, not {record.verdict}")
    return dataclasses.replace(record, step_a=a, step_b=b, judgment=judgment, error=OWN_ERROR)


def mix_own_negatives(records: Sequence[EFTRecord], policy: Policy, key: AnswerKey, sampling: Sampling, *,
                      share: float, seed: int) -> tuple[list[EFTRecord], list[EFTRecord]]:
    """(the EFT with `share` of its records given on-policy negatives, the on-policy records
    alone). Every record's prefix is sampled; the replaced records are drawn from those with a
    usable wrong sample, so the share holds as long as the model errs often enough (a record
    whose prefix drew none always keeps its synthetic bad step)."""
    records = list(records)
    if round(share * len(records)) == 0:
        return records, []
    candidates = sample_next_steps(records, policy, sampling, seed=seed)
    wrong = {i: w for i, (r, cands) in enumerate(zip(records, candidates))
             if (w := own_wrong_step(r, cands, key)) is not None}
    own = []
    for i in replaced_indices(sorted(wrong), len(records), share, seed):
        records[i] = on_policy_record(records[i], wrong[i])
        own.append(records[i])
    return records, own
