"""`psr run`: the numbered notebooks executed with papermill over the study's dependency graph,
`run.workers` at a time, resumably (see `psr.study.graph` and `psr.study.keys`)."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from psr.config import Params, load
from psr.io import read_json, write_json
from psr.study.data import m0_model, prepare_data
from psr.study.graph import Task, remaining_path, run_graph, study_graph
from psr.study.keys import STAGES, is_done, reset_if_stale, stage_key
from psr.study.kernels import StageFailed, WarmKernels, execute_notebook
from psr.study.layout import TEST_TIME_STAGE, layout_for, run_root
from psr.study.progress import ProgressBoard, remove_progress
from psr.study.provenance import code_version, with_earlier

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent.parent / "notebooks"

# Stages that may take every core when nothing else runs (a 1-thread preset's only stage on a
# multi-core machine). Generation only: its samples are the same bit for bit with any number of
# threads (tests/test_generation.py checks it); training's float sums are not, and a stage's
# result must not depend on what happened to run beside it.
SPREADS = ("02_step_search", "03_judging", "05_evaluate", TEST_TIME_STAGE)
REPORT = "07_report"  # after every stage: metrics.json, report.md, figures



Execute = Callable[[Path, Path, dict, Callable[[str], None], str, float], None]
"""(notebook, executed notebook, parameters, log, tag, run start) -> None; raises StageFailed."""


def run(params_path: str | Path, overrides: list[str] | None = None, log=print, live: bool | None = None) -> Path:
    """Execute the whole study; returns the path of metrics.json. Running stages show their
    progress: redrawn in place when `live` (default: stdout is a terminal), else as periodic lines
    through `log`."""
    overrides = list(overrides or [])
    params = load(params_path, overrides)  # fails before any compute or write
    board = ProgressBoard(log, live=sys.stdout.isatty() if live is None else live)
    log = board.log  # stages log from threads: one whole line at a time, never through the live block

    root = run_root(params)
    root.mkdir(parents=True, exist_ok=True)
    resolved = root / "params.json"  # what every notebook of this run reads (psr.study.context)
    previous = read_json(resolved).get("code") if resolved.exists() else None
    write_json(resolved, {"source": str(params_path), "overrides": overrides, "params": params.to_dict(),
                          "code": with_earlier(code_version(), previous)})
    start = time.perf_counter()
    log(f"psr run {params_path} -> {root}  (arms: {', '.join(params.run.arms)}; seeds: {list(params.run.seeds)}; "
        f"M1 -> M{params.run.iterations + 1})")
    for seed in params.run.seeds:
        layout = layout_for(params, seed)
        prepare_data(params, layout, log=log)
        m0_model(params, layout)  # before the graph: M0's stages then share a finished folder
    kernels = WarmKernels()
    execute = functools.partial(execute_notebook, kernels=kernels)
    try:
        with board:
            run_stages(str(resolved), [], params, log=log, start=start, execute=execute, board=board)
        execute(NOTEBOOK_DIR / f"{REPORT}.ipynb", root / f"{REPORT}.ipynb",
                {"params_path": str(resolved), "overrides": []}, log, REPORT, start)
    finally:
        kernels.shutdown()
    log(f"done in {time.perf_counter() - start:.0f}s: {root / 'metrics.json'}")
    return root / "metrics.json"


def run_stages(params_path: str, overrides: list[str], params: Params, *, log: Callable[[str], None],
               start: float | None = None, execute: Execute | None = None,
               board: ProgressBoard | None = None) -> None:
    """Every stage of every chain (all but the report), `run.workers` at a time, longest remaining
    path first; done ones are skipped. `execute` runs one notebook (default: papermill; tests pass
    a fake). `log` must be safe to call from several threads. `board`, if given, watches each
    running stage's progress file."""
    execute = execute or execute_notebook
    start = time.perf_counter() if start is None else start
    graph = study_graph(params)
    path_left = remaining_path(graph)
    chain = {(s, a): i for i, (s, a) in enumerate((s, a) for s in params.run.seeds for a in params.run.arms)}
    multi_seed = len(params.run.seeds) > 1

    def run_one(task: Task, alone: bool) -> None:
        seed, arm, stage, k = task.seed, task.arm, task.stage, task.k
        layout = layout_for(params, seed)
        tag = f"[seed {seed} {arm}] {stage} M{k}" if multi_seed else f"[{arm}] {stage} M{k}"
        if is_done(params, layout, arm, stage, k):
            log(f"{tag}: done already, skipped")
            return
        key = stage_key(params, seed, arm, stage, k)
        stage_dir = layout.stage_dir(arm, k, stage)
        reset_if_stale(stage_dir, key)
        remove_progress(stage_dir)  # a killed run's last report is not this run's progress
        stage_overrides = list(overrides)
        threads = os.cpu_count() or 1
        if alone and stage in SPREADS and params.run.torch_threads and threads > params.run.torch_threads:
            stage_overrides.append(f"run.torch_threads={threads}")  # not part of any stage key
            tag += f" ({threads} threads)"
        if board is not None:
            board.add(tag, stage_dir)
        t0 = time.perf_counter()
        try:
            execute(
                NOTEBOOK_DIR / f"{stage}.ipynb",
                layout.notebook_path(arm, k, stage),
                {"params_path": params_path, "overrides": stage_overrides, "seed": seed, "arm": arm, "k": k},
                log, tag, start,
            )
        finally:
            if board is not None:
                board.remove(tag)
            remove_progress(stage_dir)
        wall = time.perf_counter() - t0
        write_json(layout.marker_path(arm, k, stage), {"key": key, "wall_s": round(wall, 2), "stage": stage, "k": k})

    run_graph(graph, run_one, params.run.workers, tell_alone=True,
              order=lambda t: (-path_left[t], t.k, chain[(t.seed, t.arm)], list(STAGES).index(t.stage)))

