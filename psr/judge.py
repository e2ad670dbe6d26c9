"""Pairwise step judging (paper §3.3, Eq. 2): every candidate meets every other one twice, once in
slot A and once in slot B, so w candidates need w·(w−1) judgments (30 for w=6). Both orders are
what make the paper's rollback rule (max score == min score) reachable at all (a judge that
always names one slot gives every candidate the same score).

All comparisons of all groups (one group = one question's candidates at one step) go to the
generator in one call. A verdict is the last `[[A]]`/`[[B]]` of the judge's output; an
unparseable one gives no win to either side and is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from psr.config import JudgeParams
from psr.engines import Generator, Sample
from psr.policy import Policy
from psr.prompts import Verdict, parse_verdict
from psr.records import EFTRecord


@dataclass(frozen=True)
class JudgeGroup:
    """One question's candidates for its next step (`previous_steps` are step contents)."""

    question: str
    previous_steps: list[str]
    candidates: list[str]


@dataclass(frozen=True)
class Judgment:
    """One ordered comparison: candidate `a` shown in slot A, candidate `b` in slot B."""

    a: int
    b: int
    verdict: Verdict | None
    text: str
    n_tokens: int

    @property
    def winner(self) -> int | None:
        return None if self.verdict is None else (self.a if self.verdict == "A" else self.b)


@dataclass
class GroupJudgment:
    """Win counts of one group and what its judge calls looked like.

    `n_consistent`: unordered pairs whose two orders name the same winner (an unparseable order
    never agrees). `n_generated`/`n_tokens`: distinct prompts actually decoded for this group
    and their tokens (greedy judging decodes identical prompts once)."""

    wins: list[int]
    judgments: list[Judgment] = field(default_factory=list)
    n_parsed: int = 0
    n_consistent: int = 0
    n_generated: int = 0
    n_tokens: int = 0

    @property
    def n_judgments(self) -> int:
        return len(self.judgments)

    @property
    def n_unordered(self) -> int:
        return len(self.judgments) // 2


def ordered_pairs(width: int) -> list[tuple[int, int]]:
    """All (a, b) with a != b: each candidate once in slot A and once in slot B against every other."""
    return [(a, b) for a in range(width) for b in range(width) if a != b]


def win_counts(width: int, judgments: list[Judgment]) -> list[int]:
    """Eq. 2: Score_i = number of comparisons candidate i won (in either slot)."""
    wins = [0] * width
    for j in judgments:
        if j.winner is not None:
            wins[j.winner] += 1
    return wins


def count_consistent(judgments: list[Judgment]) -> int:
    """Unordered pairs whose two orders name the same winner."""
    winner = {(j.a, j.b): j.winner for j in judgments}
    return sum(
        1
        for (a, b), w in winner.items()
        if a < b and w is not None and winner.get((b, a)) == w
    )


def judge_decoding(params: JudgeParams) -> dict:
    """Generator arguments for the judge role (greedy unless the preset says sample)."""
    if params.do_sample:
        return dict(temperature=params.temperature, top_p=params.top_p)
    return dict(temperature=0.0, top_p=1.0)


def run_judge_prompts(
    prompts: list[str], generator: Generator, params: JudgeParams, *, seed: int
) -> list[Sample]:
    """One judge output per prompt, all in one generator call. Greedy judging decodes each
    distinct prompt once (it is deterministic, so this is pure speed); sampled judging decodes
    every prompt, so duplicates stay independent samples."""
    if not prompts:
        return []
    todo = prompts if params.do_sample else list(dict.fromkeys(prompts))
    out = generator.generate(
        todo, n=1, max_new_tokens=params.max_new_tokens, stop=None, seed=seed, **judge_decoding(params)
    )
    if len(out) != len(todo) or any(len(o) != 1 for o in out):
        raise RuntimeError(f"generator returned {len(out)} results for {len(todo)} judge prompts")
    if params.do_sample:
        return [o[0] for o in out]
    by_prompt = {p: o[0] for p, o in zip(todo, out)}
    return [by_prompt[p] for p in prompts]


def judge_groups(
    groups: list[JudgeGroup],
    policy: Policy,
    params: JudgeParams,
    *,
    seed: int = 0,
) -> list[GroupJudgment]:
    """Judge every ordered pair of every group in one batched generator call; win counts per group."""
    prompts: list[str] = []
    spans: list[tuple[int, int, list[tuple[int, int]]]] = []
    for g in groups:
        if len(g.candidates) < 2:
            raise ValueError(f"a judge group needs >= 2 candidates (got {len(g.candidates)})")
        pairs = ordered_pairs(len(g.candidates))
        start = len(prompts)
        for a, b in pairs:
            user = policy.templates.judge_prompt(g.question, g.previous_steps, g.candidates[a], g.candidates[b])
            prompts.append(policy.chat(user))
        spans.append((start, len(prompts), pairs))
    samples = run_judge_prompts(prompts, policy.generator, params, seed=seed)
    results = []
    for g, (start, end, pairs) in zip(groups, spans):
        judgments = [
            Judgment(a, b, parse_verdict(s.text), s.text, s.n_tokens)
            for (a, b), s in zip(pairs, samples[start:end])
        ]
        group_prompts = prompts[start:end]
        distinct = range(len(group_prompts)) if params.do_sample else _first_indices(group_prompts)
        results.append(
            GroupJudgment(
                wins=win_counts(len(g.candidates), judgments),
                judgments=judgments,
                n_parsed=sum(j.verdict is not None for j in judgments),
                n_consistent=count_consistent(judgments),
                n_generated=len(distinct),
                n_tokens=sum(judgments[i].n_tokens for i in distinct),
            )
        )
    return results


def _first_indices(items: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    for i, x in enumerate(items):
        seen.setdefault(x, i)
    return list(seen.values())


def _percent(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def few_shot_examples(records: Sequence[EFTRecord], n: int) -> list[EFTRecord]:
    """n worked examples for a few-shot judge prompt: records in file order, taking verdicts A and
    B in turn while both are left, so the examples show no favourite slot."""
    left = {v: [r for r in records if r.verdict == v] for v in ("A", "B")}
    want = records[0].verdict if records else "A"
    out: list[EFTRecord] = []
    while len(out) < n and (left["A"] or left["B"]):
        side = want if left.get(want) else ("B" if want == "A" else "A")
        out.append(left[side].pop(0))
        want = "B" if side == "A" else "A"
    return out


def pair_prompts(records: Sequence[EFTRecord], policy: Policy, shots: Sequence[EFTRecord] = ()) -> list[str]:
    """Two judge prompts per record, the steps as given and swapped, after `shots` worked
    examples (none: the plain judge prompt)."""
    judge = policy.templates.few_shot_judge_prompt
    prompts = []
    for r in records:
        prompts.append(policy.chat(judge(shots, r.question, r.previous_steps, r.step_a, r.step_b)))
        prompts.append(policy.chat(judge(shots, r.question, r.previous_steps, r.step_b, r.step_a)))
    return prompts


def judge_pairs_accuracy(
    records: list[EFTRecord],
    policy: Policy,
    judge_params: JudgeParams,
    *,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    shots: Sequence[EFTRecord] = (),
) -> dict:
    """Judge accuracy on held-out step pairs, in percent. Each record is judged as given and with
    the steps swapped; each order counts as one try (correct when it names the better step).
    `position_consistency`: records whose two orders name the same step (an unparseable order
    never agrees); `parse_rate`: outputs with a verdict. Percentages are None when n is 0.
    `shots`: worked examples shown before every pair (`few_shot_examples`; M0's judge).
    `on_progress(done, total)` is called with 0 records done before the one batched judge call
    and with all of them after it."""
    for r in records:
        if r.verdict not in ("A", "B"):
            raise ValueError(f"EFT record {r.id!r}: verdict must be 'A' or 'B', got {r.verdict!r}")
    prompts = pair_prompts(records, policy, shots)
    if on_progress:
        on_progress(0, len(records))
    samples = run_judge_prompts(prompts, policy.generator, judge_params, seed=seed)
    if on_progress:
        on_progress(len(records), len(records))
    correct = parsed = consistent = 0
    for k, r in enumerate(records):
        given, swapped = parse_verdict(samples[2 * k].text), parse_verdict(samples[2 * k + 1].text)
        flipped = "B" if r.verdict == "A" else "A"
        correct += (given == r.verdict) + (swapped == flipped)
        parsed += (given is not None) + (swapped is not None)
        # the same underlying step wins in both orders <=> the slot letters differ
        consistent += given is not None and swapped is not None and given != swapped
    n = len(records)
    return {
        "n": n,
        "accuracy": _percent(correct, 2 * n),
        "position_consistency": _percent(consistent, n),
        "parse_rate": _percent(parsed, 2 * n),
    }
