"""The study runner: the numbered notebooks executed with papermill as a dependency graph, resumably.

Stages of one (seed, arm) chain, K = `run.iterations` (`plan`):
    01_warmup_sft(M1); for k in 1..K: 02_step_search(Mk), 03_judging(Mk), 04_step_dpo(Mk -> Mk+1),
    05_evaluate(Mk); then 03_judging(MK+1), 05_evaluate(MK+1).
A stage needs only the model it reads, not the stage listed before it (`dependencies`):
    M1 <- 01; M(k+1) <- 04(k); 02(k), 03(k), 05(k) <- Mk; 04(k) <- 02(k).
Nothing waits for 03/05 but 06_report, which runs once at the end over all chains. So the stages of
every chain form one graph, and up to `run.workers` of them run at once (each a papermill kernel
process, hence threads suffice here). When more are ready than there are workers, the one with the
longest estimated path to the end of its chain starts first (01/02/04 before 03/05): on 2 cores
the judging and evaluation of Mk then run beside the search and DPO that make Mk+1, instead of
holding up the critical path. The first failure lets the running stages finish, starts no new one
and is raised.

Every stage has a key: a hash of its name, seed, arm, k, the params sections it reads, and the key
of the stage that made its input model. A stage is skipped when its done-marker holds the same
key; otherwise it runs (its own files resume where they stopped when the key matches, and are
wiped when it does not). Markers and executed notebooks are written atomically, last, so a
`kill -9` at any moment never leaves a stage that looks done but is not.

The stage functions (`psr.stages.warmup_stage`, ...) are what the notebooks call; the notebooks stay thin.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any, TypeVar

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


# Stages that may take every core when nothing else runs (a 1-thread preset's only stage on a
# multi-core machine). Generation only: its samples are the same bit for bit with any number of
# threads (tests/test_generation.py checks it); training's float sums are not, and a stage's
# result must not depend on what happened to run beside it.
SPREADS = ("02_step_search", "03_judging", "05_evaluate")


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
    """(stage, k) of one chain, each after the stages it depends on (one valid sequential order)."""
    K = params.run.iterations
    steps: list[tuple[str, int]] = [("01_warmup_sft", 1)]
    for k in range(1, K + 1):
        steps += [("02_step_search", k), ("03_judging", k), ("04_step_dpo", k), ("05_evaluate", k)]
    steps += [("03_judging", K + 1), ("05_evaluate", K + 1)]
    return steps


@dataclass(frozen=True)
class Task:
    """One stage of one chain: a node of the study's dependency graph."""

    seed: int
    arm: str
    stage: str
    k: int


def dependencies(task: Task) -> tuple[Task, ...]:
    """The stages `task` reads the output of: the stage that made its model M_k, and for step-DPO the
    search that made its pairs."""
    if task.stage not in STAGES:
        raise ValueError(f"unknown stage {task.stage!r} (stages: {', '.join(STAGES)})")
    if task.stage == "01_warmup_sft":
        return ()
    if task.k < 1:
        raise ValueError(f"{task}: k must be >= 1")
    made_model = (Task(task.seed, task.arm, "01_warmup_sft", 1) if task.k == 1
                  else Task(task.seed, task.arm, "04_step_dpo", task.k - 1))
    if task.stage == "04_step_dpo":
        return (made_model, Task(task.seed, task.arm, "02_step_search", task.k))
    return (made_model,)


def study_graph(params: Params) -> dict[Task, tuple[Task, ...]]:
    """Every stage of every (seed, arm) chain, mapped to its dependencies; seeds, arms and `plan`
    order preserved (the tie-break between stages equally urgent)."""
    return {t: dependencies(t) for seed in params.run.seeds for arm in params.run.arms
            for t in (Task(seed, arm, stage, k) for stage, k in plan(params))}


# Rough relative cost of a stage, used only to rank ready stages (the reference tiny run on one core:
# warm-up ~300-380 s, search ~20-180 s, judging / DPO / evaluation ~15 s each).
STAGE_COST = {"01_warmup_sft": 300.0, "02_step_search": 100.0, "03_judging": 15.0, "04_step_dpo": 15.0,
              "05_evaluate": 15.0}


def remaining_path(graph: Mapping[Task, Sequence[Task]], cost: Mapping[str, float] = STAGE_COST) -> dict[Task, float]:
    """For each stage, the estimated cost of the longest path from its start to the end of the
    graph: the stages with the largest value hold up the finish the most, so they start first."""
    children: dict[Task, list[Task]] = {t: [] for t in graph}
    for t, deps in graph.items():
        for d in deps:
            children[d].append(t)
    out: dict[Task, float] = {}
    for t in reversed(list(TopologicalSorter(graph).static_order())):
        out[t] = cost[t.stage] + max((out[c] for c in children[t]), default=0.0)
    return out


N = TypeVar("N", bound=Hashable)


def run_graph(graph: Mapping[N, Sequence[N]], run_one: Callable[..., None], workers: int,
              order: Callable[[N], Any] | None = None, *, tell_alone: bool = False) -> None:
    """Call `run_one(node)` for every node once all its dependencies returned, in at most `workers`
    threads at a time; of the ready nodes the smallest `order(node)` starts first (default: the
    graph's own order). The first exception starts no new node, lets the running ones finish and
    is raised. A cycle or a dependency outside the graph raises ValueError before anything runs.
    With `tell_alone`, `run_one(node, alone)` learns whether the node starts with nothing else
    running or ready: then nothing else can start before it ends (only an ending node makes
    others ready), so it may use every core."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    unknown = {d for deps in graph.values() for d in deps if d not in graph}
    if unknown:
        raise ValueError(f"dependencies outside the graph: {sorted(map(repr, unknown))}")
    sorter = TopologicalSorter(graph)
    sorter.prepare()  # graphlib.CycleError (a ValueError) on a cycle
    position = {n: i for i, n in enumerate(graph)}
    rank = order or position.__getitem__
    ready: list[tuple[Any, int, N]] = []  # heap; the unique position keeps nodes from being compared
    running: dict[Future, N] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="psr-stage") as pool:
        while running or (failure is None and sorter.is_active()):
            if failure is None:
                for n in sorter.get_ready():
                    heapq.heappush(ready, (rank(n), position[n], n))
                while ready and len(running) < workers:
                    n = heapq.heappop(ready)[2]
                    args = (n, not running and not ready) if tell_alone else (n,)
                    running[pool.submit(run_one, *args)] = n
            if not running:  # cannot happen after prepare(): an active graph has a ready node
                raise RuntimeError("scheduler stalled with no stage ready or running")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                n = running.pop(f)
                if f.exception() is None:
                    sorter.done(n)
                elif failure is None:
                    failure = f.exception()
    if failure is not None:
        raise failure


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


Execute = Callable[[Path, Path, dict, Callable[[str], None], str, float], None]
"""(notebook, executed notebook, parameters, log, tag, run start) -> None; raises StageFailed."""


def run(params_path: str | Path, overrides: list[str] | None = None, log=print) -> Path:
    """Execute the whole study; returns the path of metrics.json."""
    overrides = list(overrides or [])
    params = load(params_path, overrides)  # fails before any compute or write
    lock = threading.Lock()
    raw_log = log

    def log(msg: str) -> None:  # stages log from threads: one whole line at a time
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
    kernels = WarmKernels()
    execute = functools.partial(_execute, kernels=kernels)
    try:
        run_stages(str(params_path), overrides, params, log=log, start=start, execute=execute)
        report_nb = root / "06_report.ipynb"
        execute(NOTEBOOK_DIR / "06_report.ipynb", report_nb, {"params_path": str(params_path), "overrides": overrides},
                log, "06_report", start)
    finally:
        kernels.shutdown()
    log(f"done in {time.perf_counter() - start:.0f}s: {root / 'metrics.json'}")
    return root / "metrics.json"


def run_stages(params_path: str, overrides: list[str], params: Params, *, log: Callable[[str], None],
               start: float | None = None, execute: Execute | None = None) -> None:
    """Every stage of every chain (all but 06_report), `run.workers` at a time, longest remaining
    path first; done ones are skipped. `execute` runs one notebook (default: papermill; tests pass
    a fake). `log` must be safe to call from several threads."""
    execute = execute or _execute
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
        _reset_if_stale(layout.stage_dir(arm, k, stage), key)
        t0 = time.perf_counter()
        stage_overrides = list(overrides)
        threads = os.cpu_count() or 1
        if alone and stage in SPREADS and params.run.torch_threads and threads > params.run.torch_threads:
            stage_overrides.append(f"run.torch_threads={threads}")  # not part of any stage key
            tag += f" ({threads} threads)"
        execute(
            NOTEBOOK_DIR / f"{stage}.ipynb",
            layout.notebook_path(arm, k, stage),
            {"params_path": params_path, "overrides": stage_overrides, "seed": seed, "arm": arm, "k": k},
            log, tag, start,
        )
        wall = time.perf_counter() - t0
        write_json(layout.marker_path(arm, k, stage), {"key": key, "wall_s": round(wall, 2), "stage": stage, "k": k})

    run_graph(graph, run_one, params.run.workers, tell_alone=True,
              order=lambda t: (-path_left[t], t.k, chain[(t.seed, t.arm)], list(STAGES).index(t.stage)))


def _reset_if_stale(stage_dir: Path, key: str) -> None:
    """Keep a stage's partial files only if they were made for this very key (resume); else wipe."""
    key_file = stage_dir / ".key"
    if stage_dir.exists() and (not key_file.exists() or key_file.read_text().strip() != key):
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(key)


# the kernel's start-up chatter (a TCP-transport warning) would bury the progress lines
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class WarmKernels:
    """One Jupyter kernel per worker thread, reused from stage to stage. Why: a fresh kernel
    that imports torch, transformers and TRL costs ~7 s of CPU per stage (measured here), about
    150 s of the tiny study's 22 stages on 2 cores. Between stages the kernel's namespace is
    cleared (`%reset -f`, then garbage collection), so a notebook sees only its own variables and
    the previous stage's models are freed; only imported modules stay. A kernel whose stage
    failed, or that died, is replaced by a fresh one."""

    RESET = "%reset -f\nimport gc\ngc.collect()"
    WARM = "import torch, transformers, trl\nimport psr.stages, psr.views"

    def __init__(self, cwd: Path | None = None):
        self.cwd = cwd or Path.cwd()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    def acquire(self):
        """This thread's kernel manager, ready for a new notebook."""
        km = getattr(self._local, "km", None)
        if km is not None and km.is_alive():
            self._run(km, self.RESET)
            return km
        from jupyter_client.manager import KernelManager

        km = KernelManager(kernel_name="python3")
        km.start_kernel(cwd=str(self.cwd), extra_arguments=KERNEL_ARGS)
        self._run(km, self.WARM)
        self._local.km = km
        with self._lock:
            self._all.append(km)
        return km

    def discard(self) -> None:
        """Shut this thread's kernel down (after a failed stage: its state is unknown)."""
        km = getattr(self._local, "km", None)
        self._local.km = None
        if km is not None:
            km.shutdown_kernel(now=True)

    def shutdown(self) -> None:
        with self._lock:
            kms, self._all = self._all, []
        for km in kms:
            if km.has_kernel:
                km.shutdown_kernel(now=True)

    @staticmethod
    def _run(km, code: str) -> None:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            reply = kc.execute_interactive(code, timeout=120, store_history=False, silent=True,
                                           output_hook=lambda msg: None)  # set-up chatter is not a stage's output
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"kernel set-up failed: {reply['content'].get('evalue', '')}")
        finally:
            kc.stop_channels()


def _execute(src: Path, dst: Path, parameters: dict, log, tag: str, start: float,
             kernels: WarmKernels | None = None) -> None:
    """Run one notebook with papermill into `dst` (atomically), in a warm kernel when given."""
    import papermill as pm

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    t0 = time.perf_counter()
    log(f"{tag}: running ({time.perf_counter() - start:.0f}s elapsed)")
    try:
        extra = {"km": kernels.acquire()} if kernels is not None else {}
        pm.execute_notebook(
            str(src), str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False,
            cwd=str(Path.cwd()), language="python", extra_arguments=KERNEL_ARGS, **extra,
        )
    except Exception as e:
        if kernels is not None:
            kernels.discard()
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
