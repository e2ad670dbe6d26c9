"""The SRLM baseline's preference data (Yuan et al. 2024; paper §5.1): whole solutions scored 1-5
by the model itself. The preference stage makes preference data by step search for PSRLM and
by this solution scoring for SRLM (its stage id, `02_step_search`, is shared by both arms).

Per question: sample N solutions, have the same model score each one `n_score_repeats` times with
the solution-scoring prompt (`Score: N`), average the parsed scores, and pair the best with the
worst; equal scores give no pair. Like the step search, no gold answer is used. One JSON line per
question (its pair or none, with all scores) makes the file resumable after a kill; samples
depend only on (seed, prompt), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from psr.config import SRLMParams
from psr.engines import derive_seed
from psr.io import append_jsonl, read_jsonl
from psr.policy import Policy
from psr.prompts import parse_score
from psr.records import Question, SolutionPair


@dataclass
class SRLMQuestionResult:
    id: str
    scores: list[float | None]
    pair: dict | None


@dataclass
class ScoredSolutions:
    """One question's sampled solutions with their mean scores (None: no score parsed), as
    `srlm_pairs(on_scored=...)` reports them for analysis after the fact (srlm.jsonl keeps only
    the pair's two texts)."""

    id: str
    solutions: list[str]
    scores: list[float | None]


@dataclass
class SRLMStats:
    questions: int
    pairs: int
    ties: int
    score_parse_rate: float  # percent of solutions with at least one valid `Score: N` among their repeats
    mean_score: float
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def srlm_pairs(
    questions: list[Question],
    policy: Policy,
    params: SRLMParams,
    *,
    iteration: int,
    seed: int,
    out_path: str | Path,
    chunk_size: int = 32,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    on_scored: Callable[[list[ScoredSolutions]], None] | None = None,
) -> SRLMStats:
    """Score and pair every question not yet in `out_path`, a chunk at a time; then summarise the
    file. `on_progress(done, total)`: called at the start (questions already in the file count as
    done) and after each chunk. `on_scored(rows)`: each chunk's solutions and scores, just before
    the chunk's results are appended (a kill in between reports that chunk again on resume)."""
    out_path = Path(out_path)
    start = time.perf_counter()
    done = {r.id for r in _read(out_path)}
    todo = [q for q in questions if q.id not in done]
    resumed = len(questions) - len(todo)
    if on_progress:
        on_progress(resumed, len(questions))
    bar = tqdm(total=len(questions), initial=resumed, desc="srlm pairs", disable=not progress)
    templates, generator = policy.templates, policy.generator
    for c in range(0, len(todo), chunk_size):
        chunk = todo[c : c + chunk_size]
        prompts = [policy.chat(templates.reasoning_prompt(q.question)) for q in chunk]
        solutions = generator.generate(
            prompts, n=params.n_candidates, temperature=params.temperature, top_p=params.top_p,
            max_new_tokens=params.max_new_tokens, stop=None, seed=derive_seed(seed, iteration, "solutions"),
        )
        score_prompts = [
            policy.chat(templates.srlm_prompt(q.question, s.text.strip()))
            for q, sols in zip(chunk, solutions)
            for s in sols
        ]
        scored = generator.generate(
            score_prompts, n=params.n_score_repeats, temperature=params.temperature, top_p=params.top_p,
            max_new_tokens=params.score_max_new_tokens, stop=None, seed=derive_seed(seed, iteration, "scores"),
        )
        results, texts = [], []
        for qi, (q, sols) in enumerate(zip(chunk, solutions)):
            rows = scored[qi * params.n_candidates : (qi + 1) * params.n_candidates]
            raw = [[parse_score(r.text) for r in row] for row in rows]
            texts.append([s.text.strip() for s in sols])
            results.append(_pair(q, texts[-1], raw, iteration))
        if on_scored:
            on_scored([ScoredSolutions(r.id, t, list(r.scores)) for r, t in zip(results, texts)])
        append_jsonl(out_path, results)
        bar.update(len(chunk))
        if on_progress:
            on_progress(resumed + c + len(chunk), len(questions))
    bar.close()
    return summarise(_read(out_path), questions, time.perf_counter() - start)


def _pair(q: Question, texts: list[str], raw: list[list[float | None]], iteration: int) -> SRLMQuestionResult:
    """Best vs worst mean score; ties (or fewer than two scored solutions) give no pair."""
    means: list[float | None] = []
    for scores in raw:
        valid = [s for s in scores if s is not None]
        means.append(statistics.fmean(valid) if valid else None)
    scored = [(m, i) for i, m in enumerate(means) if m is not None]
    pair = None
    if len(scored) >= 2:
        best = max(scored, key=lambda t: (t[0], -t[1]))
        worst = min(scored, key=lambda t: (t[0], t[1]))
        if best[0] > worst[0] and texts[best[1]] != texts[worst[1]]:
            pair = asdict(
                SolutionPair(
                    id=q.id, question=q.question, chosen=texts[best[1]], rejected=texts[worst[1]],
                    chosen_score=best[0], rejected_score=worst[0], iteration=iteration,
                )
            )
    return SRLMQuestionResult(id=q.id, scores=[round(m, 4) if m is not None else None for m in means], pair=pair)


def read_scored(path: str | Path) -> list[ScoredSolutions]:
    """A file of `on_scored` rows, one per question (the last copy of a question reported twice)."""
    return list({r.id: r for r in read_jsonl(path, ScoredSolutions)}.values())


def _read(path: Path) -> list[SRLMQuestionResult]:
    return read_jsonl(path, SRLMQuestionResult) if path.exists() else []


def load_pairs(path: str | Path) -> list[SolutionPair]:
    return [SolutionPair(**r.pair) for r in _read(Path(path)) if r.pair]


def summarise(results: list[SRLMQuestionResult], questions: list[Question], wall_s: float) -> SRLMStats:
    wanted = {q.id for q in questions}
    results = [r for r in results if r.id in wanted]
    all_scores = [s for r in results for s in r.scores]
    valid = [s for s in all_scores if s is not None]
    return SRLMStats(
        questions=len(results),
        pairs=sum(r.pair is not None for r in results),
        ties=sum(r.pair is None for r in results),
        score_parse_rate=round(100.0 * len(valid) / len(all_scores), 2) if all_scores else 0.0,
        mean_score=round(statistics.fmean(valid), 3) if valid else 0.0,
        wall_s=round(wall_s, 2),
    )
