"""The study runner: the numbered notebooks executed with papermill, in order, resumably.

Plan for one (seed, arm) chain, K = `run.iterations`:
    01_warmup_sft(M1); for k in 1..K: 02_step_search(Mk), 03_judging(Mk), 04_step_dpo(Mk -> Mk+1),
    05_evaluate(Mk); then 03_judging(MK+1), 05_evaluate(MK+1).
06_report runs once at the end over all chains. Chains run in parallel processes (`run.workers`).

Every stage has a key: a hash of its name, seed, arm, k, the params sections it reads, and the key
of the stage that made its input model. A stage is skipped when its done-marker holds the same
key; otherwise it runs (its own files resume where they stopped when the key matches, and are
wiped when it does not). Markers and executed notebooks are written atomically, last, so a
`kill -9` at any moment never leaves a stage that looks done but is not.

The stage functions below (`warmup_stage`, ...) are what the notebooks call; all logic lives here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psr.config import Params, load
from psr.io import read_json, write_json

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

STAGES = {
    "01_warmup_sft": ("task", "model", "prompts", "warmup"),
    "02_step_search": ("task", "search", "judge", "srlm"),
    "03_judging": ("judge", "eval"),
    "04_step_dpo": ("dpo",),
    "05_evaluate": ("eval",),
}


class StageFailed(RuntimeError):
    """A notebook cell raised; the message names the executed notebook that shows the error."""


@dataclass(frozen=True)
class Layout:
    """Where a run's files live. One seed: results/<run>/<arm>/M<k>/...; several seeds get a
    seed<s>/ level between the run folder and the arm."""

    root: Path
    seed: int
    multi_seed: bool = False

    @property
    def seed_dir(self) -> Path:
        return self.root / f"seed{self.seed}" if self.multi_seed else self.root

    @property
    def data_dir(self) -> Path:
        return self.seed_dir / "data"

    def model_dir(self, arm: str, k: int) -> Path:
        return self.seed_dir / arm / f"M{k}" / "model"

    def stage_dir(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / stage

    def notebook_path(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / f"{stage}.ipynb"

    def marker_path(self, arm: str, k: int, stage: str) -> Path:
        return self.seed_dir / arm / f"M{k}" / f".{stage}.done.json"


def run_root(params: Params) -> Path:
    return Path(params.run.results_dir) / params.run.name


def layout_for(params: Params, seed: int) -> Layout:
    return Layout(run_root(params), seed, multi_seed=len(params.run.seeds) > 1)


def plan(params: Params) -> list[tuple[str, int]]:
    """(stage, k) in execution order for one chain."""
    K = params.run.iterations
    steps: list[tuple[str, int]] = [("01_warmup_sft", 1)]
    for k in range(1, K + 1):
        steps += [("02_step_search", k), ("03_judging", k), ("04_step_dpo", k), ("05_evaluate", k)]
    steps += [("03_judging", K + 1), ("05_evaluate", K + 1)]
    return steps


def stage_key(params: Params, seed: int, arm: str, stage: str, k: int) -> str:
    """Hash of what a stage's result depends on (see module docstring)."""
    upstream = model_key(params, seed, arm, k) if stage != "01_warmup_sft" else ""
    if stage == "04_step_dpo":
        upstream += stage_key(params, seed, arm, "02_step_search", k)
    sections = STAGES[stage]
    payload = json.dumps(
        [stage, seed, arm, k, params.digest(*sections), upstream, params.run.iterations if stage == "02_step_search" else 0],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_key(params: Params, seed: int, arm: str, k: int) -> str:
    if k == 1:
        return stage_key(params, seed, arm, "01_warmup_sft", 1)
    return stage_key(params, seed, arm, "04_step_dpo", k - 1)


def is_done(params: Params, layout: Layout, arm: str, stage: str, k: int) -> bool:
    marker = layout.marker_path(arm, k, stage)
    if not marker.exists():
        return False
    try:
        return read_json(marker).get("key") == stage_key(params, layout.seed, arm, stage, k)
    except ValueError:
        return False


# ----------------------------------------------------------------------------- runner


def run(params_path: str | Path, overrides: list[str] | None = None, log=print) -> Path:
    """Execute the whole study; returns the path of metrics.json."""
    overrides = list(overrides or [])
    params = load(params_path, overrides)  # fails before any compute or write
    lock = threading.Lock()
    raw_log = log

    def log(msg: str) -> None:  # chains log from threads: one whole line at a time
        with lock:
            raw_log(msg)

    root = run_root(params)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "params.json", {"source": str(params_path), "overrides": overrides, "params": params.to_dict()})
    start = time.perf_counter()
    log(f"psr run {params_path} -> {root}  (arms: {', '.join(params.run.arms)}; seeds: {list(params.run.seeds)}; "
        f"M1 -> M{params.run.iterations + 1})")
    from psr.stages import prepare_data

    for seed in params.run.seeds:
        prepare_data(params, layout_for(params, seed), log=log)
    chains = [(seed, arm) for seed in params.run.seeds for arm in params.run.arms]
    stop = threading.Event()  # the first failure stops the other chains before their next stage
    with ThreadPoolExecutor(max_workers=min(params.run.workers, len(chains))) as pool:
        futures = [pool.submit(_run_chain, str(params_path), overrides, params, seed, arm, start, log, stop)
                   for seed, arm in chains]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]
    report_nb = root / "06_report.ipynb"
    _execute(NOTEBOOK_DIR / "06_report.ipynb", report_nb, {"params_path": str(params_path), "overrides": overrides}, log, "06_report", start)
    log(f"done in {time.perf_counter() - start:.0f}s: {root / 'metrics.json'}")
    return root / "metrics.json"


def _run_chain(params_path: str, overrides: list[str], params: Params, seed: int, arm: str, start: float, log,
               stop: threading.Event) -> None:
    layout = layout_for(params, seed)
    for stage, k in plan(params):
        if stop.is_set():
            return
        tag = f"[seed {seed} {arm}] {stage} M{k}" if len(params.run.seeds) > 1 else f"[{arm}] {stage} M{k}"
        if is_done(params, layout, arm, stage, k):
            log(f"{tag}: done already, skipped")
            continue
        key = stage_key(params, seed, arm, stage, k)
        _reset_if_stale(layout.stage_dir(arm, k, stage), key)
        t0 = time.perf_counter()
        try:
            _execute(
                NOTEBOOK_DIR / f"{stage}.ipynb",
                layout.notebook_path(arm, k, stage),
                {"params_path": params_path, "overrides": overrides, "seed": seed, "arm": arm, "k": k},
                log, tag, start,
            )
        except BaseException:
            stop.set()
            raise
        wall = time.perf_counter() - t0
        write_json(layout.marker_path(arm, k, stage), {"key": key, "wall_s": round(wall, 2), "stage": stage, "k": k})


def _reset_if_stale(stage_dir: Path, key: str) -> None:
    """Keep a stage's partial files only if they were made for this very key (resume); else wipe."""
    key_file = stage_dir / ".key"
    if stage_dir.exists() and (not key_file.exists() or key_file.read_text().strip() != key):
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(key)


def _execute(src: Path, dst: Path, parameters: dict, log, tag: str, start: float) -> None:
    import papermill as pm

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    t0 = time.perf_counter()
    log(f"{tag}: running ({time.perf_counter() - start:.0f}s elapsed)")
    try:
        pm.execute_notebook(
            str(src), str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False,
            cwd=str(Path.cwd()), language="python",
            # the kernel's start-up chatter (a TCP-transport warning) would bury the progress lines
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except Exception as e:
        failed = dst.with_name(dst.stem + ".failed.ipynb")
        if tmp.exists():
            os.replace(tmp, failed)
        raise StageFailed(f"{tag} failed: {type(e).__name__}; see the executed notebook {failed}") from e
    os.replace(tmp, dst)
    log(f"{tag}: finished in {time.perf_counter() - t0:.1f}s")


# ----------------------------------------------------------------------------- stage context


@dataclass
class Context:
    """What a notebook needs: the validated params and where its files go."""

    params: Params
    layout: Layout
    arm: str
    k: int
    seed: int

    @classmethod
    def create(cls, params_path: str, overrides: list[str] | None, seed: int, arm: str, k: int) -> "Context":
        params = load(params_path, list(overrides or []))
        from psr.models import set_threads

        set_threads(params.run.torch_threads)
        return cls(params=params, layout=layout_for(params, seed), arm=arm, k=k, seed=seed)

    def stage_dir(self, stage: str) -> Path:
        d = self.layout.stage_dir(self.arm, self.k, stage)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def model_dir(self) -> Path:
        return self.layout.model_dir(self.arm, self.k)

    @property
    def templates(self):
        from psr.prompts import Templates

        return Templates.for_params(self.params)


def load_json_if(path: Path) -> Any:
    return read_json(path) if path.exists() else None
