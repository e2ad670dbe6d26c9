"""The step-wise search with pairwise self-judging (paper §3.3) that turns a policy into its own
preference data (PPD), and the same search as a test-time scaling strategy.

At each step: sample `w` candidate next steps, score them, chosen = argmax score, rejected =
argmin score, continue from the chosen step. If all scores are equal (max == min) the previous
step and its pair are dropped and the search rolls back one step. A question ends at a
final step (`\\boxed{}` or EOS), at `max_steps` steps, or after `expansion_cap` expansions (the
paper's "max iteration number", rollbacks included).

The scoring is pluggable (`Scorer`): the paper's self-judge (`SelfJudge`, the default: the
policy judges every ordered pair, a candidate's score is its wins) or any other scorer a caller
passes in, such as the answer-key scorer of the verified control arm (`psr.answer_key`). The
search itself never sees an answer: it takes `Question`s, which have no answer field, and a
scorer that knows answers must be handed to it explicitly.

Duplicates (`search.dedupe_candidates`): by default scores are wins among the *distinct*
candidate texts and w identical samples are taken without judging (`distinct_candidates`); with
`false` the paper's rule is applied literally: all w samples are judged over all w(w-1) ordered
pairs, copies included, and all-equal scores (as w identical samples always give) roll back.

All active questions advance in lockstep: one generate call for all their candidates and one
scorer call (for the self-judge: one judge call for all comparisons) per round.

Resume: a finished question's pairs are appended to `out_path`, *then* its status line to the
status log beside it. On start, pairs of questions without a status line (a kill between the two
appends) are dropped by an atomic rewrite and those questions are searched again.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from psr.config import JudgeParams, SearchParams
from psr.engines import derive_seed
from psr.io import FLATTEN, RecordError, append_jsonl, read_jsonl, write_jsonl
from psr.judge import GroupJudgment, JudgeGroup, judge_groups
from psr.policy import Policy
from psr.records import PPDPair, Question
from psr.steps import STOP_STRING, is_final, join_steps, prefix_text, strip_marker


@dataclass
class SearchCounters:
    """What a search did: one question's expansions and judge calls while it runs and in its
    status line, or the sum over questions in `SearchStats`."""

    expansions: int = 0
    ties: int = 0  # expansions whose scores were all equal
    rollbacks: int = 0  # steps dropped by those ties
    judge_calls: int = 0  # ordered comparisons
    judge_generations: int = 0  # distinct judge prompts decoded
    parsed: int = 0  # judge outputs with a verdict
    consistent: int = 0  # unordered pairs whose two orders name the same winner
    unordered_pairs: int = 0
    candidate_tokens: int = 0
    judge_tokens: int = 0
    unanimous: int = 0  # expansions whose w candidates were all the same text (taken, no pair)

    def __add__(self, other: SearchCounters) -> SearchCounters:
        return SearchCounters(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))

    def count_judgment(self, verdicts: GroupJudgment) -> None:
        self.judge_calls += verdicts.n_judgments
        self.judge_generations += verdicts.n_generated
        self.parsed += verdicts.n_parsed
        self.consistent += verdicts.n_consistent
        self.unordered_pairs += verdicts.n_unordered
        self.judge_tokens += verdicts.n_tokens


@dataclass(frozen=True)
class Candidates:
    """One question's distinct candidate next steps at one expansion, as a scorer sees them.
    `finals[i]`: candidate i ends the solution (a `\\boxed{}` step or EOS)."""

    question: Question
    previous_steps: list[str]
    texts: list[str]
    finals: list[bool]


class Scorer(Protocol):
    """Scores every group of candidates of one round: one `GroupJudgment` per group, whose `wins`
    are the candidates' scores (chosen = argmax, rejected = argmin, all equal = roll back) and
    whose counters say what judging it took (all zero for a scorer that does not judge)."""

    def score(self, groups: list[Candidates], *, seed: int) -> list[GroupJudgment]: ...


@dataclass(frozen=True)
class SelfJudge:
    """The paper's scorer (Eq. 2): the policy judges every ordered pair of a group's candidates
    with the judge prompt; a candidate's score is the number of comparisons it won."""

    policy: Policy
    params: JudgeParams

    def score(self, groups: list[Candidates], *, seed: int) -> list[GroupJudgment]:
        as_judged = [JudgeGroup(g.question.question, list(g.previous_steps), list(g.texts)) for g in groups]
        return judge_groups(as_judged, self.policy, self.params, seed=seed)


@dataclass
class QuestionStatus:
    """One line of the status log: a question is done, with its counters (so stats survive a
    resume). `stop`: "final" | "max_steps" | "expansion_cap". On disk the counters sit beside
    the other fields in one flat JSON object."""

    id: str
    finished: bool
    stop: str
    n_pairs: int
    n_steps: int
    counters: SearchCounters = field(default_factory=SearchCounters, metadata={FLATTEN: True})


@dataclass
class SearchStats:
    """Totals over the questions of one `step_search` call (resumed ones included). Rates are
    percents; `wall_time_s` covers this invocation only."""

    questions: int = 0
    finished: int = 0
    pairs: int = 0
    counters: SearchCounters = field(default_factory=SearchCounters)
    wall_time_s: float = 0.0
    resumed: int = 0  # questions already done before this call

    @property
    def finished_rate(self) -> float:
        return 100.0 * self.finished / self.questions if self.questions else 0.0

    @property
    def pairs_per_question(self) -> float:
        return self.pairs / self.questions if self.questions else 0.0

    @property
    def parse_rate(self) -> float:
        c = self.counters
        return 100.0 * c.parsed / c.judge_calls if c.judge_calls else 0.0

    @property
    def position_consistency(self) -> float:
        c = self.counters
        return 100.0 * c.consistent / c.unordered_pairs if c.unordered_pairs else 0.0

    def to_dict(self) -> dict:
        """The stage summary (and the `search` entry of metrics.json)."""
        c = self.counters
        return {
            "questions": self.questions,
            "finished": self.finished,
            "finished_rate": self.finished_rate,
            "pairs": self.pairs,
            "pairs_per_question": self.pairs_per_question,
            "expansions": c.expansions,
            "ties": c.ties,
            "unanimous": c.unanimous,
            "rollbacks": c.rollbacks,
            "judge_calls": c.judge_calls,
            "judge_generations": c.judge_generations,
            "parse_rate": self.parse_rate,
            "position_consistency": self.position_consistency,
            "candidate_tokens": c.candidate_tokens,
            "judge_tokens": c.judge_tokens,
            "wall_time_s": self.wall_time_s,
            "resumed": self.resumed,
        }


@dataclass
class ExpansionTrace:
    """One expansion of one question, as `step_search(on_expansion=...)` reports it (a notebook
    draws a question's search tree from these). Steps are contents without `Step n: `, as in PPD
    pairs. `candidates` are the ones judged, which `judgments`, `wins`, `chosen` and `rejected`
    index: the distinct texts among the w samples in first-seen order (`search.dedupe_candidates`),
    or all w samples (the paper's literal rule); `samples` keeps all w.

    `outcome`: "pair" (chosen and rejected differ: a PPD pair, kept unless a later rollback drops
    it), "unanimous" (one distinct candidate: taken without judging), "rollback" (all scores
    tied: the last step is dropped, or at the first step the step is sampled again) or
    "same_text" (chosen and rejected read the same: taken without a pair). `stop` is the
    question's stop after this expansion ("" while it goes on)."""

    question_id: str
    previous_steps: list[str]
    candidates: list[str]
    judgments: list[tuple[int, int, str | None]]  # (i in slot A, j in slot B, verdict "A"/"B"/None)
    wins: list[int]
    chosen: int | None
    rejected: int | None
    outcome: str
    samples: list[str] = field(default_factory=list)
    finals: list[bool] = field(default_factory=list)  # per candidate: the step ends the solution
    judge_texts: list[str] = field(default_factory=list)  # the judge's output per judgment
    stop: str = ""
    expansion: int = 0  # 1-based among this question's expansions


class ExpansionLog:
    """An `on_expansion` hook that keeps every expansion of the search in a JSON-lines file (for
    analysis after the search: nothing in the search reads it). A question's expansions are
    appended together when it ends, so a kill leaves no half-searched question in the file; the
    judge's texts and the raw samples are left out to keep it small. A question searched again
    after a kill is logged again: `read_expansions` keeps one copy (a resumed question replays
    exactly)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._open: dict[str, list[ExpansionTrace]] = {}

    def __call__(self, trace: ExpansionTrace) -> None:
        self._open.setdefault(trace.question_id, []).append(
            dataclasses.replace(trace, judge_texts=[], samples=[]))
        if trace.stop:
            append_jsonl(self.path, self._open.pop(trace.question_id))


def read_expansions(path: str | Path) -> list[ExpansionTrace]:
    """An `ExpansionLog` file, one trace per (question, expansion): the last copy of each."""
    traces = {(t.question_id, t.expansion): t for t in read_jsonl(path, ExpansionTrace)}
    return list(traces.values())


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
    counters: SearchCounters = field(default_factory=SearchCounters)

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
) -> tuple[str, int | None, int | None]:
    """Apply one expansion's judged candidates to a question (the paper's rule plus our caps).
    `contents` are the *distinct* candidate texts; with only one (`verdicts` is None) the model
    was unanimous: that step is taken with no pair and no rollback. Returns the outcome (see
    `ExpansionTrace`) and the chosen and rejected candidate indices."""
    c = state.counters
    c.expansions += 1
    if verdicts is None:
        c.unanimous += 1
        state.steps.append(contents[0])
        state.pairs.append(None)
        if finals[0]:
            state.final = True
            state.stop = "final"
            return "unanimous", 0, None
        _check_caps(state, search)
        return "unanimous", 0, None
    c.count_judgment(verdicts)
    wins = verdicts.wins
    if max(wins) == min(wins):
        outcome, best, worst = "rollback", None, None
        c.ties += 1
        if state.steps:  # drop s_{l-1} and its pair, resample step l-1
            state.steps.pop()
            state.pairs.pop()
            c.rollbacks += 1
    else:
        rng = random.Random(derive_seed(seed, iteration, state.question.id, c.expansions))
        best, worst = _pick(wins, max(wins), rng), _pick(wins, min(wins), rng)
        chosen, rejected = contents[best], contents[worst]
        pair = None
        outcome = "same_text"
        if chosen != rejected:  # identical texts teach nothing and would be a degenerate DPO pair
            outcome = "pair"
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
            return outcome, best, worst
    _check_caps(state, search)
    return outcome, best, worst


def _check_caps(state: _State, search: SearchParams) -> None:
    if len(state.steps) >= search.max_steps:
        state.stop = "max_steps"
    elif state.counters.expansions >= search.expansion_cap:
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
    policy: Policy,
    search: SearchParams,
    scorer: Scorer,
    *,
    iteration: int,
    seed: int,
    on_done: Callable[[_State], None],
    on_expansion: Callable[[ExpansionTrace], None] | None = None,
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
            samples = policy.generator.generate(
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
            sampled = [[strip_marker(x.text) for x in row] for row in samples]
            finals = [[is_final(c) or x.finish_reason == "eos" for c, x in zip(cs, row)] for cs, row in zip(sampled, samples)]
            if search.dedupe_candidates:
                distinct = [distinct_candidates(cs, fs) for cs, fs in zip(sampled, finals)]
                contents, finals = [d[0] for d in distinct], [d[1] for d in distinct]
            else:  # the paper's literal rule: every sample is a candidate, copies included
                contents = sampled
            judged = [i for i, cs in enumerate(contents) if len(cs) >= 2]
            groups = [Candidates(active[i].question, list(active[i].steps), contents[i], finals[i]) for i in judged]
            results = scorer.score(groups, seed=derive_seed(seed, iteration, "judge", round_index)) if groups else []
            if len(results) != len(groups):
                raise RuntimeError(f"scorer returned {len(results)} scorings for {len(groups)} groups")
            verdicts: list[GroupJudgment | None] = [None] * len(active)
            for i, r in zip(judged, results):
                verdicts[i] = r
            for s, cs, fs, row, raw, v in zip(active, contents, finals, samples, sampled, verdicts):
                s.counters.candidate_tokens += sum(x.n_tokens for x in row)
                previous = list(s.steps)
                outcome, best, worst = _advance(s, cs, fs, v, search, iteration, seed)
                if on_expansion:
                    on_expansion(_trace(s, previous, cs, fs, raw, v, outcome, best, worst))
                if s.done:
                    on_done(s)
                    bar.update(1)
            active = [s for s in active if not s.done]
            round_index += 1
            bar.set_postfix(round=round_index, active=len(active))
    finally:
        bar.close()


def _trace(
    state: _State,
    previous: list[str],
    contents: list[str],
    finals: list[bool],
    sampled: list[str],
    verdicts: GroupJudgment | None,
    outcome: str,
    best: int | None,
    worst: int | None,
) -> ExpansionTrace:
    judgments = verdicts.judgments if verdicts else []
    return ExpansionTrace(
        question_id=state.question.id,
        previous_steps=previous,
        candidates=list(contents),
        judgments=[(j.a, j.b, j.verdict) for j in judgments],
        wins=list(verdicts.wins) if verdicts else [0],
        chosen=best,
        rejected=worst,
        outcome=outcome,
        samples=list(sampled),
        finals=list(finals),
        judge_texts=[j.text for j in judgments],
        stop=state.stop,
        expansion=state.counters.expansions,
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
    return SearchStats(
        questions=len(statuses),
        finished=sum(s.finished for s in statuses),
        pairs=sum(s.n_pairs for s in statuses),
        counters=sum((s.counters for s in statuses), SearchCounters()),
        wall_time_s=wall,
        resumed=resumed,
    )


def _reasoning_states(questions: list[Question], policy: Policy) -> list[_State]:
    return [_State(q, policy.chat(policy.templates.reasoning_prompt(q.question))) for q in questions]


def step_search(
    questions: list[Question],
    policy: Policy,
    search: SearchParams,
    judge: JudgeParams,
    *,
    iteration: int,
    seed: int,
    out_path: str | Path,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    on_expansion: Callable[[ExpansionTrace], None] | None = None,
    scorer: Scorer | None = None,
) -> SearchStats:
    """Search every question, append its PPD pairs to `out_path` (JSON lines of `PPDPair`) and
    return totals. Questions already in the status log are skipped, so rerunning after a kill
    resumes. Pairs of unfinished questions are kept only if `search.keep_unfinished`.

    `scorer`: how candidates are scored (default: `SelfJudge(policy, judge)`, the paper's
    self-judge). `on_progress(done, total)`: called at the start (resumed questions count as
    done) and as each question finishes. `on_expansion(trace)`: called once per expansion
    (`ExpansionTrace`)."""
    _check_inputs(questions, search)
    start = time.perf_counter()
    out_path = Path(out_path)
    log_path = status_path(out_path)
    done = _resume(out_path, log_path)
    todo = [q for q in questions if q.id not in done]
    resumed = len(questions) - len(todo)
    fresh: list[QuestionStatus] = []
    if on_progress:
        on_progress(resumed, len(questions))

    def write_done(s: _State) -> None:
        keep = s.final or search.keep_unfinished
        pairs = [p for p in s.pairs if p is not None] if keep else []
        append_jsonl(out_path, pairs)
        status = QuestionStatus(s.question.id, s.final, s.stop, len(pairs), len(s.steps), s.counters)
        append_jsonl(log_path, [status])  # after the pairs: a status line vouches for them
        fresh.append(status)
        if on_progress:
            on_progress(resumed + len(fresh), len(questions))

    _run(
        _reasoning_states(todo, policy), policy, search, scorer or SelfJudge(policy, judge),
        iteration=iteration, seed=seed, on_done=write_done, on_expansion=on_expansion, progress=progress,
        desc=f"step search (iteration {iteration})", initial=resumed, total=len(questions),
    )
    wanted = {q.id for q in questions}
    statuses = [s for s in done.values() if s.id in wanted] + fresh
    return _stats(statuses, time.perf_counter() - start, resumed)


def trace_search(
    question: Question,
    policy: Policy,
    search: SearchParams,
    judge: JudgeParams,
    *,
    iteration: int,
    seed: int,
    scorer: Scorer | None = None,
) -> list[ExpansionTrace]:
    """Every expansion of one question's search, re-run in a temporary folder. Samples depend
    only on (seed, prompt) and a question's e-th expansion always falls in round e, so with the
    stage's policy, params, scorer, iteration and seed this is the search the stage ran for it."""
    traces: list[ExpansionTrace] = []
    with tempfile.TemporaryDirectory(prefix="psr-trace-") as tmp:
        step_search(
            [question], policy, search, judge, iteration=iteration, seed=seed,
            out_path=Path(tmp) / "ppd.jsonl", progress=False, on_expansion=traces.append, scorer=scorer,
        )
    return traces


@dataclass
class Solved:
    """One question solved by the search at test time: its text (`Step 1: ...`, partial when a
    cap stopped it), how it stopped (as `QuestionStatus.stop`) and what the search spent on it."""

    id: str
    text: str
    finished: bool
    stop: str
    n_steps: int
    counters: SearchCounters = field(default_factory=SearchCounters, metadata={FLATTEN: True})

    @property
    def tokens(self) -> int:
        """Every token generated for the question: candidate steps and judgments."""
        return self.counters.candidate_tokens + self.counters.judge_tokens


def solve_with_search(
    questions: list[Question],
    policy: Policy,
    search: SearchParams,
    judge: JudgeParams,
    seed: int,
    *,
    progress: bool = True,
    scorer: Scorer | None = None,
    on_done: Callable[[Solved], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Test-time scaling (paper §5.2): the same search, keeping the best candidate at every step
    and no pairs; returns each question's solution text (`Step 1: ...`), partial if a cap hit.
    `scorer`: as in `step_search`. `on_done(solved)`: called as each question ends, so a caller
    can keep it at once (a question's e-th expansion always falls in round e with the same seeds,
    so a question solved again after a kill replays exactly). `on_progress(done, total)`: at the
    start and as each question ends."""
    _check_inputs(questions, search)
    states = _reasoning_states(questions, policy)
    done = [0]
    if on_progress:
        on_progress(0, len(states))

    def finish(s: _State) -> None:
        done[0] += 1
        if on_done:
            on_done(Solved(s.question.id, join_steps(s.steps), s.final, s.stop, len(s.steps),
                           dataclasses.replace(s.counters)))
        if on_progress:
            on_progress(done[0], len(states))

    _run(
        states, policy, search, scorer or SelfJudge(policy, judge),
        iteration=0, seed=derive_seed(seed, "solve"), on_done=finish, progress=progress,
        desc="search-based solving",
    )
    return [join_steps(s.steps) for s in states]
