"""The pair diagnostics of a run (`psr.diagnostics`), computed by the report after every chain
has finished, from what each preference stage kept beside its pairs and the task's answer key.
Each finished preference stage gets a `diagnostics.json` beside its `summary.json`, which
`psr.study.report` collects like a summary, so the diagnostics are one more file of the stage
that made the pairs and never an input of any stage.

A diagnostics file records the stage key it was computed for and is recomputed only when the
stage has run again (its done-marker holds another key) or the diagnostics changed (`VERSION`).
A run folder without markers (a fresh clone of a committed run, whose scorer files are not
committed) keeps the diagnostics it has.
"""

from __future__ import annotations

from pathlib import Path

from psr.answer_key import AnswerKey, task_answer_key
from psr.config import Params
from psr.diagnostics import solution_diagnostics, step_diagnostics
from psr.io import read_json, read_jsonl, write_json
from psr.records import PPDPair, Question
from psr.search import read_expansions
from psr.srlm import load_pairs, read_scored
from psr.study.arms import searches_steps
from psr.study.layout import DIAGNOSTICS, EXPANSIONS, PREFERENCE_STAGE, SCORED, Layout, layout_for

VERSION = 1


def _questions(layout: Layout, k: int) -> dict[str, str]:
    return {q.id: q.question for q in read_jsonl(layout.data_dir / f"pool_{k}.jsonl", Question)}


def compute(layout: Layout, arm: str, k: int, key: AnswerKey) -> dict:
    """The diagnostics of `arm`'s preference data of M_k, from the stage's files."""
    d = layout.stage_dir(arm, k, PREFERENCE_STAGE)
    questions = _questions(layout, k)
    if searches_steps(arm):
        pairs = read_jsonl(d / "ppd.jsonl", PPDPair) if (d / "ppd.jsonl").exists() else []
        traces = read_expansions(d / EXPANSIONS) if (d / EXPANSIONS).exists() else []
        return step_diagnostics(pairs, traces, questions, key)
    scored = read_scored(d / SCORED) if (d / SCORED).exists() else []
    return solution_diagnostics(load_pairs(d / "srlm.jsonl"), scored, questions, key)


def diagnose_stage(layout: Layout, arm: str, k: int, key: AnswerKey) -> dict | None:
    """`arm`'s M_k diagnostics: computed and saved if the stage finished since they were last
    computed, else the saved ones (None when there are none)."""
    path = layout.stage_dir(arm, k, PREFERENCE_STAGE) / DIAGNOSTICS
    saved = read_json(path) if path.exists() else None
    marker = layout.marker_path(arm, k, PREFERENCE_STAGE)
    if not marker.exists():
        return saved
    stage_key = read_json(marker)["key"]
    if saved and saved.get("stage_key") == stage_key and saved.get("version") == VERSION:
        return saved
    result = dict(compute(layout, arm, k, key), stage_key=stage_key, version=VERSION)
    write_json(path, result)
    return result


def diagnose_run(params: Params) -> list[Path]:
    """Diagnostics for every finished preference stage of the run; the files written or kept.
    A task without an answer key (`psr.answer_key.task_answer_key`) has none."""
    key = task_answer_key(params.task.kind)
    if key is None:
        return []
    paths = []
    for seed in params.run.seeds:
        layout = layout_for(params, seed)
        for arm in params.run.arms:
            for k in range(1, params.run.iterations + 1):
                if diagnose_stage(layout, arm, k, key) is not None:
                    paths.append(layout.stage_dir(arm, k, PREFERENCE_STAGE) / DIAGNOSTICS)
    return paths
