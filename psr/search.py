"""The step-wise search with pairwise self-judging (paper §3.3) that turns a policy into its own
preference data (PPD), and the same search as a test-time scaling strategy.

At each step: sample `w` candidate next steps, judge every ordered pair, chosen = argmax wins,
rejected = argmin wins, continue from the chosen step. If all scores are equal (max == min) the
previous step and its pair are dropped and the search rolls back one step. A question ends at a
final step (`\\boxed{}` or EOS), at `max_steps` steps, or after `expansion_cap` expansions (the
paper's "max iteration number", rollbacks included).

All active questions advance in lockstep: one generate call for all their candidates and one
judge call for all their comparisons per round. The search takes `Question`s, which have no
answer field: gold answers cannot reach it.

Resume: a finished question's pairs are appended to `out_path`, *then* its status line to the
status log beside it. On start, pairs of questions without a status line (a kill between the two
appends) are dropped by an atomic rewrite and those questions are searched again.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from psr.config import JudgeParams, SearchParams
from psr.engines import Generator, derive_seed
from psr.io import RecordError, append_jsonl, read_jsonl, write_jsonl
from psr.judge import GroupJudgment, JudgeGroup, judge_groups
from psr.prompts import Templates, chat_prompt
from psr.records import PPDPair, Question
from psr.steps import STOP_STRING, is_final, join_steps, prefix_text, strip_marker


@dataclass
class QuestionStatus:
    """One line of the status log: a question is done, with its counters (so stats survive a
    resume). `stop`: "final" | "max_steps" | "expansion_cap"."""

    id: str
    finished: bool
    stop: str
    n_pairs: int
    n_steps: int
    expansions: int
    ties: int
    rollbacks: int
    judge_calls: int
    judge_generations: int
    parsed: int
    consistent: int
    unordered_pairs: int
    candidate_tokens: int
    judge_tokens: int
    unanimous: int = 0


@dataclass
class SearchStats:
    """Totals over the questions of one `step_search` call (resumed ones included). Rates are
    percents; `wall_time_s` covers this invocation only."""

    questions: int = 0
    finished: int = 0
    finished_rate: float = 0.0
    pairs: int = 0
    pairs_per_question: float = 0.0
    expansions: int = 0
    ties: int = 0  # expansions whose scores were all equal
    unanimous: int = 0  # expansions whose w candidates were all the same text (taken, no pair)
    rollbacks: int = 0  # steps dropped by those ties
    judge_calls: int = 0  # ordered comparisons
    judge_generations: int = 0  # distinct judge prompts decoded
    parse_rate: float = 0.0
    position_consistency: float = 0.0
    candidate_tokens: int = 0
    judge_tokens: int = 0
    wall_time_s: float = 0.0
    resumed: int = 0  # questions already done before this call

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _State:
    """A question in flight. `pairs[i]` is the pair that produced `steps[i]` (None when chosen and
    rejected were identical), so a rollback drops both together."""

    question: Question
    prompt: str
    steps: list[str] = field(default_factory=list)
    pairs: list[PPDPair | None] = field(default_factory=list)
    final: bool = False
    stop: str = ""
    expansions: int = 0
    ties: int = 0
    rollbacks: int = 0
    judge_calls: int = 0
    judge_generations: int = 0
    parsed: int = 0
    consistent: int = 0
    unordered_pairs: int = 0
    candidate_tokens: int = 0
    judge_tokens: int = 0
    unanimous: int = 0

    @property
    def done(self) -> bool:
        return bool(self.stop)


def status_path(out_path: str | Path) -> Path:
    """The status log beside a PPD file: `pairs.jsonl` -> `pairs.status.jsonl`."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".status.jsonl")


def pair_question_id(pair: PPDPair) -> str:
    """Pair ids are `{question id}#{step number}`."""
    return pair.id.rsplit("#", 1)[0]


def _check_inputs(questions: list[Question], search: SearchParams) -> None:
    for q in questions:
        if not isinstance(q, Question):
            raise TypeError(
                f"the search takes psr.records.Question (no answer field), got {type(q).__name__}; "
                "build Question(id, question) so no gold answer can reach it"
            )
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate question id {dup!r}")
    errors = search.check()
    if errors:
        key, msg = next(iter(errors.items()))
        raise ValueError(f"search.{key} {msg}")


def _pick(scores: list[int], target: int, rng: random.Random) -> int:
    """Seeded tie-break among the candidates that share the target score."""
    return rng.choice([i for i, s in enumerate(scores) if s == target])


def _advance(
    state: _State,
    contents: list[str],
    finals: list[bool],
    verdicts: GroupJudgment | None,
    search: SearchParams,
    iteration: int,
    seed: int,
) -> None:
    """Apply one expansion's judged candidates to a question (the paper's rule plus our caps).
    `contents` are the *distinct* candidate texts; with only one (`verdicts` is None) the model
    was unanimous: that step is taken with no pair and no rollback."""
    state.expansions += 1
    if verdicts is None:
        state.unanimous += 1
        state.steps.append(contents[0])
        state.pairs.append(None)
        if finals[0]:
            state.final = True
            state.stop = "final"
            return
        _check_caps(state, search)
        return
    state.judge_calls += verdicts.n_judgments
    state.judge_generations += verdicts.n_generated
    state.parsed += verdicts.n_parsed
    state.consistent += verdicts.n_consistent
    state.unordered_pairs += verdicts.n_unordered
    state.judge_tokens += verdicts.n_tokens
    wins = verdicts.wins
    if max(wins) == min(wins):
        state.ties += 1
        if state.steps:  # drop s_{l-1} and its pair, resample step l-1
            state.steps.pop()
            state.pairs.pop()
            state.rollbacks += 1
    else:
        rng = random.Random(derive_seed(seed, iteration, state.question.id, state.expansions))
        best, worst = _pick(wins, max(wins), rng), _pick(wins, min(wins), rng)
        chosen, rejected = contents[best], contents[worst]
        pair = None
        if chosen != rejected:  # identical texts teach nothing and would be a degenerate DPO pair
            pair = PPDPair(
                id=f"{state.question.id}#{len(state.steps) + 1}",
                question=state.question.question,
                previous_steps=list(state.steps),
                chosen=chosen,
                rejected=rejected,
                is_final=finals[best],
                scores=list(wins),
                iteration=iteration,
                rejected_is_final=finals[worst],
            )
        state.steps.append(chosen)
        state.pairs.append(pair)
        if finals[best]:
            state.final = True
            state.stop = "final"
            return
    _check_caps(state, search)


def _check_caps(state: _State, search: SearchParams) -> None:
    if len(state.steps) >= search.max_steps:
        state.stop = "max_steps"
    elif state.expansions >= search.expansion_cap:
        state.stop = "expansion_cap"


def distinct_candidates(contents: list[str], finals: list[bool]) -> tuple[list[str], list[bool]]:
    """The candidates with duplicates removed (first occurrence kept). The paper is silent on
    duplicates; judging a text against itself only adds position noise, and a confident model at
    T = 0.5 often samples the same step w times, which the all-equal rule would then roll back
    forever. So scores are win counts over the ordered pairs of *distinct* candidates."""
    seen: dict[str, int] = {}
    for i, c in enumerate(contents):
        seen.setdefault(c, i)
    keep = list(seen.values())
    return [contents[i] for i in keep], [finals[i] for i in keep]


def _run(
    states: list[_State],
    generator: Generator,
    templates: Templates,
    tokenizer,
    search: SearchParams,
    judge: JudgeParams,
    *,
    iteration: int,
    seed: int,
    on_done: Callable[[_State], None],
    progress: bool,
    desc: str,
    initial: int = 0,
    total: int | None = None,
) -> None:
    """Lockstep rounds until every state is done. Round r uses seeds derived from (seed,
    iteration, r), and every question starts at round 0, so a question's e-th expansion always
    gets the same seeds (a resumed question replays exactly with a deterministic generator)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total if total is not None else len(states), initial=initial, desc=desc, disable=not progress)
    active = [s for s in states if not s.done]
    round_index = 0
    try:
        while active:
            prompts = [s.prompt + prefix_text(s.steps) for s in active]
            samples = generator.generate(
                prompts,
                n=search.width,
                temperature=search.temperature,
                top_p=search.top_p,
                max_new_tokens=search.max_step_tokens,
                stop=STOP_STRING,
                seed=derive_seed(seed, iteration, "candidates", round_index),
            )
            if len(samples) != len(active) or any(len(x) != search.width for x in samples):
                raise RuntimeError(f"generator returned a wrong number of samples for {len(active)} prompts")
            contents = [[strip_marker(x.text) for x in row] for row in samples]
            finals = [[is_final(c) or x.finish_reason == "eos" for c, x in zip(cs, row)] for cs, row in zip(contents, samples)]
            distinct = [distinct_candidates(cs, fs) for cs, fs in zip(contents, finals)]
            contents, finals = [d[0] for d in distinct], [d[1] for d in distinct]
            judged = [i for i, cs in enumerate(contents) if len(cs) >= 2]
            groups = [JudgeGroup(active[i].question.question, list(active[i].steps), contents[i]) for i in judged]
            results = judge_groups(
                groups, generator, templates, tokenizer, judge, seed=derive_seed(seed, iteration, "judge", round_index)
            ) if groups else []
            verdicts: list[GroupJudgment | None] = [None] * len(active)
            for i, r in zip(judged, results):
                verdicts[i] = r
            for s, cs, fs, row, v in zip(active, contents, finals, samples, verdicts):
                s.candidate_tokens += sum(x.n_tokens for x in row)
                _advance(s, cs, fs, v, search, iteration, seed)
                if s.done:
                    on_done(s)
                    bar.update(1)
            active = [s for s in active if not s.done]
            round_index += 1
            bar.set_postfix(round=round_index, active=len(active))
    finally:
        bar.close()


def _status(s: _State, n_pairs: int) -> QuestionStatus:
    return QuestionStatus(
        id=s.question.id,
        finished=s.final,
        stop=s.stop,
        n_pairs=n_pairs,
        n_steps=len(s.steps),
        expansions=s.expansions,
        ties=s.ties,
        rollbacks=s.rollbacks,
        judge_calls=s.judge_calls,
        judge_generations=s.judge_generations,
        parsed=s.parsed,
        consistent=s.consistent,
        unordered_pairs=s.unordered_pairs,
        candidate_tokens=s.candidate_tokens,
        judge_tokens=s.judge_tokens,
        unanimous=s.unanimous,
    )


def _resume(out_path: Path, log_path: Path) -> dict[str, QuestionStatus]:
    """Statuses of questions already done; pairs of any other question are dropped atomically."""
    statuses = {s.id: s for s in read_jsonl(log_path, QuestionStatus)} if log_path.exists() else {}
    if not out_path.exists():
        if any(s.n_pairs for s in statuses.values()):
            raise RecordError(f"{log_path}: lists pairs but {out_path} is missing; delete both to start over")
        return statuses
    pairs = read_jsonl(out_path, PPDPair)
    keep = [p for p in pairs if pair_question_id(p) in statuses]
    counts: dict[str, int] = {}
    for p in keep:
        counts[pair_question_id(p)] = counts.get(pair_question_id(p), 0) + 1
    for qid, s in statuses.items():
        if counts.get(qid, 0) != s.n_pairs:
            raise RecordError(
                f"{out_path}: question {qid!r} has {counts.get(qid, 0)} pairs but {log_path} says {s.n_pairs}; "
                "the files do not belong together (delete both to start over)"
            )
    if len(keep) != len(pairs) or out_path.read_bytes()[-1:] not in (b"", b"\n"):
        write_jsonl(out_path, keep)
    return statuses


def _stats(statuses: list[QuestionStatus], wall: float, resumed: int) -> SearchStats:
    n = len(statuses)
    total = lambda name: sum(getattr(s, name) for s in statuses)  # noqa: E731
    pairs, calls, unordered = total("n_pairs"), total("judge_calls"), total("unordered_pairs")
    return SearchStats(
        questions=n,
        finished=total("finished"),
        finished_rate=100.0 * total("finished") / n if n else 0.0,
        pairs=pairs,
        pairs_per_question=pairs / n if n else 0.0,
        expansions=total("expansions"),
        ties=total("ties"),
        unanimous=total("unanimous"),
        rollbacks=total("rollbacks"),
        judge_calls=calls,
        judge_generations=total("judge_generations"),
        parse_rate=100.0 * total("parsed") / calls if calls else 0.0,
        position_consistency=100.0 * total("consistent") / unordered if unordered else 0.0,
        candidate_tokens=total("candidate_tokens"),
        judge_tokens=total("judge_tokens"),
        wall_time_s=wall,
        resumed=resumed,
    )


def step_search(
    questions: list[Question],
    generator: Generator,
    templates: Templates,
    tokenizer,
    search: SearchParams,
    judge: JudgeParams,
    *,
    iteration: int,
    seed: int,
    out_path: str | Path,
    progress: bool = True,
) -> SearchStats:
    """Search every question, append its PPD pairs to `out_path` (JSON lines of `PPDPair`) and
    return totals. Questions already in the status log are skipped, so rerunning after a kill
    resumes. Pairs of unfinished questions are kept only if `search.keep_unfinished`."""
    _check_inputs(questions, search)
    start = time.perf_counter()
    out_path = Path(out_path)
    log_path = status_path(out_path)
    done = _resume(out_path, log_path)
    todo = [q for q in questions if q.id not in done]
    resumed = len(questions) - len(todo)
    fresh: list[QuestionStatus] = []

    def write_done(s: _State) -> None:
        keep = s.final or search.keep_unfinished
        pairs = [p for p in s.pairs if p is not None] if keep else []
        append_jsonl(out_path, pairs)
        status = _status(s, len(pairs))
        append_jsonl(log_path, [status])  # after the pairs: a status line vouches for them
        fresh.append(status)

    states = [_State(q, chat_prompt(tokenizer, templates.reasoning_prompt(q.question))) for q in todo]
    _run(
        states, generator, templates, tokenizer, search, judge,
        iteration=iteration, seed=seed, on_done=write_done, progress=progress,
        desc=f"step search (iteration {iteration})", initial=resumed, total=len(questions),
    )
    wanted = {q.id for q in questions}
    statuses = [s for s in done.values() if s.id in wanted] + fresh
    return _stats(statuses, time.perf_counter() - start, resumed)


def solve_with_search(
    questions: list[Question],
    generator: Generator,
    templates: Templates,
    tokenizer,
    search: SearchParams,
    judge: JudgeParams,
    seed: int,
    *,
    progress: bool = True,
) -> list[str]:
    """Test-time scaling (paper §5.2): the same search, keeping the best candidate at every step
    and no pairs; returns each question's solution text (`Step 1: ...`), partial if a cap hit."""
    _check_inputs(questions, search)
    states = [_State(q, chat_prompt(tokenizer, templates.reasoning_prompt(q.question))) for q in questions]
    _run(
        states, generator, templates, tokenizer, search, judge,
        iteration=0, seed=derive_seed(seed, "solve"), on_done=lambda s: None, progress=progress,
        desc="search-based solving",
    )
    return [join_steps(s.steps) for s in states]
