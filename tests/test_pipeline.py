"""The study runner.

Fast: the stage graph and its scheduler, event-driven (no sleeps): `run_graph` on small graphs,
and the runner with a fake notebook executor whose stages end when a virtual clock says so:
dependencies hold, at most `run.workers` stages run at once, the critical path (01/02/04) goes
first, judging/evaluation of M_k run beside the making of M_k+1, the first failure starts no new
stage, and each running stage's progress file is watched and cleaned up.

Slow: the whole study through papermill at smoke size: all three arms, K = 2, every notebook executed;
and a run killed with SIGKILL in the middle of a stage resumes and ends with the same
metrics.json as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from psr.config import load
from psr.study import graph as graph_module
from psr.study.graph import Task, dependencies, plan, run_graph, study_graph
from psr.study.keys import model_key, stage_key
from psr.study.kernels import StageFailed, WarmKernels, execute_notebook
from psr.study.layout import layout_for
from psr.study.progress import PROGRESS_FILE, ProgressBoard, ProgressWriter, progress_path, read_progress
from psr.study.runner import run_stages

REPO = Path(__file__).resolve().parent.parent
SMOKE = [
    "run.iterations=2", "task.n_ift=60", "task.n_eft=60", "task.n_eft_test=8", "task.n_test=8",
    "task.questions_per_iteration=[4,4]", "task.n_srlm_eft=60",
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128",
    "warmup.max_steps=150", "warmup.per_device_batch_size=8", "warmup.batch_size=8", "warmup.learning_rate=0.005",
    "dpo.max_steps=2", "dpo.per_device_batch_size=4", "dpo.batch_size=4",
    "search.width=3", "search.max_step_tokens=12", "search.expansion_cap=3", "search.keep_unfinished=true",
    "judge.max_new_tokens=40", "srlm.n_candidates=2", "srlm.n_score_repeats=1", "srlm.max_new_tokens=24",
    "srlm.score_max_new_tokens=16", "eval.max_new_tokens=24",
]


def psr_run(results: Path, name: str, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "psr", "run", "params/tiny.yaml", "-p", f"run.name={name}",
            "-p", f"run.results_dir={results}"]
    for o in SMOKE:
        args += ["-p", o]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def comparable(metrics: dict) -> dict:
    """metrics.json without what legitimately differs between two runs: wall times, paths, dates."""
    drop = {"wall_s", "wall_time_s", "created", "model", "train_runtime", "train_samples_per_second",
            "train_steps_per_second", "peak_memory", "resumed", "run", "params", "source", "path",
            "peak_rss_mb", "peak_cuda_mb", "reference", "parent"}

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in drop}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(metrics)


# ----------------------------------------------------------------------------- scheduling (fast)
#
# No test here sleeps or depends on how fast a thread runs: stages end only when the test says
# so, and the test waits (with generous timeouts that only bound a failure) for the scheduler to
# take each end into account before it ends the next stage.

SETTLE_S = 60.0  # how long to wait for the scheduler before calling it stuck


def tiny_params(tmp_path, *overrides):
    return load(REPO / "params" / "tiny.yaml",
                [f"run.results_dir={tmp_path}", "run.name=sched", "run.iterations=2", *overrides])


@pytest.fixture
def settled(monkeypatch):
    """Calls `settled.hooks` with (node, exception or None) once the scheduler can see that a
    node's `run_one` returned: from its future's done-callback, which runs after the future's
    waiters (the scheduler's `wait`) were notified. A test that ends the next stage only after
    this knows the scheduler will see the two ends in that order."""
    hooks: list = []

    class ObservedPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            future = super().submit(fn, *args, **kwargs)
            future.add_done_callback(lambda f, node=args[0]: [h(node, f.exception()) for h in hooks])
            return future

    monkeypatch.setattr(graph_module, "ThreadPoolExecutor", ObservedPool)
    return hooks


class FakeNotebooks:
    """Stands in for papermill: records ("start"/"end"/"fail", (arm, stage, k)) in the order they
    happen and raises StageFailed for the stage `fail`. Undriven, a stage ends at once; driven
    (by `Simulation`), a started stage waits until the simulation releases it."""

    def __init__(self, fail: tuple[str, str, int] | None = None):
        self.fail = fail
        self.events: list[tuple[str, tuple[str, str, int]]] = []
        self.cv = threading.Condition()
        self.driven = False
        self.running: dict[Task, int] = {}  # started and not yet released, in start order
        self.released: set[Task] = set()
        self._starts = 0

    def __call__(self, src, dst, parameters, log, tag, start) -> None:
        task = Task(parameters["seed"], parameters["arm"], Path(src).stem, parameters["k"])
        name = (task.arm, task.stage, task.k)
        with self.cv:
            self.events.append(("start", name))
            self.running[task] = self._starts
            self._starts += 1
            self.cv.notify_all()
            if self.driven:
                assert self.cv.wait_for(lambda: task in self.released, timeout=SETTLE_S), f"{name} never released"
            del self.running[task]
            if name == self.fail:
                self.events.append(("fail", name))
                raise StageFailed(f"{tag} failed: RuntimeError; see the executed notebook {dst}")
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            Path(dst).write_text("{}")
            self.events.append(("end", name))

    def index(self, event: str, arm: str, stage: str, k: int) -> int:
        return self.events.index((event, (arm, stage, k)))

    def started(self) -> list[tuple[str, str, int]]:
        return [name for event, name in self.events if event == "start"]

    def max_running(self) -> int:
        running = most = 0
        for event, _ in self.events:
            running += 1 if event == "start" else -1
            most = max(most, running)
        return most


class Simulation:
    """`run_stages` against driven FakeNotebooks on a virtual clock: each stage lasts
    `seconds[(arm, stage)]`, `seconds[(stage, k)]` or `seconds[stage]` virtual seconds (default 1). Whenever the scheduler
    has settled (it runs `workers` stages, or no stage is ready, or one failed), the running stage
    with the earliest virtual end is released, and the next step waits until the scheduler has
    seen that end. The order of events is then what those durations imply, on any machine."""

    def __init__(self, params, fake: FakeNotebooks, seconds: dict, settled_hooks: list):
        self.params, self.fake, self.seconds = params, fake, seconds
        self.graph = study_graph(params)
        self.ok: set[Task] = set()
        self.failures: set[Task] = set()
        self.finished = False
        self.error: BaseException | None = None
        self.lines: list[str] = []
        fake.driven = True
        settled_hooks.append(self._settled)

    def _settled(self, task: Task, error: BaseException | None) -> None:
        with self.fake.cv:
            (self.ok if error is None else self.failures).add(task)
            self.fake.cv.notify_all()

    def _quiet(self) -> bool:
        if self.finished or self.failures:
            return True
        started = {Task(self.params.run.seeds[0], a, s, k) for _, (a, s, k) in self.fake.events}
        busy = started - self.ok
        ready = [t for t, deps in self.graph.items() if t not in started and all(d in self.ok for d in deps)]
        return len(busy) == self.params.run.workers or not ready

    def duration(self, task: Task) -> float:
        by_stage = self.seconds.get((task.stage, task.k), self.seconds.get(task.stage, 1.0))
        return self.seconds.get((task.arm, task.stage), by_stage)

    def run(self) -> list[str]:
        def target() -> None:
            try:
                run_stages("params/tiny.yaml", [], self.params, log=self.lines.append, execute=self.fake)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                self.error = e
            finally:
                with self.fake.cv:
                    self.finished = True
                    self.fake.cv.notify_all()

        thread = threading.Thread(target=target)
        thread.start()
        now, ends = 0.0, {}
        cv = self.fake.cv
        with cv:
            while True:
                assert cv.wait_for(lambda: self._quiet() and (self.finished or self.fake.running), SETTLE_S), \
                    f"scheduler stuck; events so far: {self.fake.events[-6:]}"
                if self.finished:
                    break
                for task in self.fake.running:
                    ends.setdefault(task, now + self.duration(task))
                task = min(self.fake.running, key=lambda t: (ends[t], self.fake.running[t]))
                now = ends[task]
                self.fake.released.add(task)
                cv.notify_all()
                assert cv.wait_for(lambda: task in self.ok or task in self.failures, SETTLE_S), \
                    f"{task} never ended"
        thread.join(SETTLE_S)
        if self.error is not None:
            raise self.error
        return self.lines


def run_fake(params, fake: FakeNotebooks) -> list[str]:
    lines: list[str] = []
    run_stages("params/tiny.yaml", [], params, log=lines.append, execute=fake)
    return lines


def test_graph_has_every_planned_stage_and_only_model_dependencies(tmp_path):
    params = tiny_params(tmp_path)  # psrlm, srlm, verified
    graph = study_graph(params)
    assert len(plan(params, "srlm")) == 11
    assert len(plan(params, "psrlm")) == 11 + 2 + 3  # and M0's judging and evaluation, and 06 on M1 .. M3
    assert len(graph) == 16 + 11 + len(plan(params, "verified"))

    def t(stage, k, arm="psrlm"):
        return Task(0, arm, stage, k)

    assert graph[t("01_warmup_sft", 1)] == ()
    for stage in ("02_step_search", "03_judging", "05_evaluate", "06_test_time_scaling"):
        assert graph[t(stage, 1)] == (t("01_warmup_sft", 1),)
        assert graph[t(stage, 2)] == (t("04_step_dpo", 1),)
    assert set(graph[t("04_step_dpo", 2)]) == {t("04_step_dpo", 1), t("02_step_search", 2)}
    assert graph[t("05_evaluate", 3, "srlm")] == (t("04_step_dpo", 2, "srlm"),)
    assert graph[t("03_judging", 0)] == graph[t("05_evaluate", 0)] == ()  # M0 is made before the graph runs
    with pytest.raises(ValueError, match="unknown stage"):
        dependencies(t("08_nothing", 1))
    with pytest.raises(ValueError, match="M0 has only"):
        dependencies(t("02_step_search", 0))


def test_m0_is_judged_and_evaluated_once_per_seed_in_the_first_arm_that_makes_its_own_m1(tmp_path):
    params = tiny_params(tmp_path, "run.seeds=[0, 1]")
    m0 = sorted((t.seed, t.arm, t.stage) for t in study_graph(params) if t.k == 0)
    assert m0 == [(s, "psrlm", stage) for s in (0, 1) for stage in ("03_judging", "05_evaluate")]
    assert [t.arm for t in study_graph(tiny_params(tmp_path, "run.arms=[srlm, psrlm]")) if t.k == 0] == ["srlm"] * 2
    # M0's key stands for what M0 is built from, and its judging's for the worked examples it is shown
    key = stage_key(params, 0, "psrlm", "03_judging", 0)
    assert stage_key(tiny_params(tmp_path, "run.seeds=[0, 1]", "m0.judge_shots=2"), 0, "psrlm", "03_judging", 0) != key
    assert stage_key(tiny_params(tmp_path, "run.seeds=[0, 1]", "m0.judge_shots=2"), 0, "psrlm", "03_judging", 1) == \
        stage_key(params, 0, "psrlm", "03_judging", 1)
    assert stage_key(tiny_params(tmp_path, "run.seeds=[0, 1]", "model.hidden_size=96"), 0, "psrlm", "05_evaluate", 0) \
        != stage_key(params, 0, "psrlm", "05_evaluate", 0)


def test_the_test_time_search_runs_on_psrlms_models_when_the_preset_asks(tmp_path):
    params = tiny_params(tmp_path, "test_time.problems=5")
    for arm in ("psrlm", "srlm", "verified"):
        ks = [k for stage, k in plan(params, arm) if stage == "06_test_time_scaling"]
        assert ks == ([1, 2, 3] if arm == "psrlm" else [])
    assert not any(stage == "06_test_time_scaling" for stage, _ in plan(tiny_params(tmp_path, "test_time.problems=0"),
                                                                         "psrlm"))
    key = stage_key(params, 0, "psrlm", "06_test_time_scaling", 2)
    assert stage_key(tiny_params(tmp_path, "test_time.problems=6"), 0, "psrlm", "06_test_time_scaling", 2) != key
    assert stage_key(tiny_params(tmp_path, "test_time.problems=6"), 0, "psrlm", "05_evaluate", 2) == \
        stage_key(params, 0, "psrlm", "05_evaluate", 2)


def test_the_verified_chain_starts_from_psrlms_m1_and_is_never_judged(tmp_path):
    params = tiny_params(tmp_path)
    assert plan(params, "verified") == [("02_step_search", 1), ("04_step_dpo", 1), ("02_step_search", 2),
                                        ("04_step_dpo", 2), ("05_evaluate", 2), ("05_evaluate", 3)]
    graph = study_graph(params)
    psrlm_m1 = Task(0, "psrlm", "01_warmup_sft", 1)
    assert graph[Task(0, "verified", "02_step_search", 1)] == (psrlm_m1,)
    assert set(graph[Task(0, "verified", "04_step_dpo", 1)]) == {psrlm_m1, Task(0, "verified", "02_step_search", 1)}
    assert graph[Task(0, "verified", "05_evaluate", 2)] == (Task(0, "verified", "04_step_dpo", 1),)
    # its M1 is psrlm's model, file and key; what it makes from there is its own
    layout = layout_for(params, 0)
    assert layout.model_dir("verified", 1) == layout.model_dir("psrlm", 1) == tmp_path / "sched" / "psrlm" / "M1" / "model"
    assert layout.model_dir("verified", 2) == tmp_path / "sched" / "verified" / "M2" / "model"
    assert model_key(params, 0, "verified", 1) == stage_key(params, 0, "psrlm", "01_warmup_sft", 1)
    assert stage_key(params, 0, "verified", "02_step_search", 1) != stage_key(params, 0, "psrlm", "02_step_search", 1)
    assert model_key(params, 0, "verified", 2) != model_key(params, 0, "psrlm", 2)


def test_run_graph_rejects_bad_graphs_before_running_anything():
    ran = []
    with pytest.raises(ValueError):  # graphlib.CycleError
        run_graph({"a": ("b",), "b": ("a",)}, ran.append, 2)
    with pytest.raises(ValueError):
        run_graph({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()}, ran.append, 2)
    with pytest.raises(ValueError, match="outside the graph"):
        run_graph({"a": ("z",)}, ran.append, 2)
    with pytest.raises(ValueError, match="workers"):
        run_graph({"a": ()}, ran.append, 0)
    assert ran == []


def test_run_graph_runs_exactly_workers_nodes_at_a_time():
    workers = 3
    meet = threading.Barrier(workers, timeout=SETTLE_S)  # breaks unless `workers` nodes run together
    lock = threading.Lock()
    running, most, ran = [0], [0], []

    def run_one(node: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            ran.append(node)
        meet.wait()
        with lock:
            running[0] -= 1

    run_graph({i: () for i in range(2 * workers)}, run_one, workers)
    assert most[0] == workers and sorted(ran) == list(range(2 * workers))


def test_run_graph_starts_the_ready_node_of_smallest_rank_first():
    graph = {"a": (), "b": (), "c": (), "d": ("a",), "e": ("a",)}
    rank = {"a": 3, "b": 5, "c": 4, "d": 0, "e": 9}
    order: list[str] = []
    run_graph(graph, order.append, 1, order=rank.__getitem__)
    # a first (the smallest rank ready); then d jumps ahead of the waiting c and b
    assert order == ["a", "d", "c", "b", "e"]
    order.clear()
    run_graph(graph, order.append, 1)  # default: the graph's own order among the ready
    assert order == ["a", "b", "c", "d", "e"]


def test_run_graph_first_failure_starts_nothing_new_lets_running_nodes_finish_and_is_raised(settled):
    events: list[str] = []
    b_started, a_seen = threading.Event(), threading.Event()
    settled.append(lambda node, error: a_seen.set() if node == "a" else None)

    def run_one(node: str) -> None:
        events.append(f"start {node}")
        if node == "a":
            assert b_started.wait(SETTLE_S)
            raise RuntimeError("a failed")
        b_started.set()
        assert a_seen.wait(SETTLE_S)  # the scheduler sees a's failure no later than b's end
        events.append(f"end {node}")

    # c is ready all along and d once b ends; only a failure-blind scheduler would start them
    with pytest.raises(RuntimeError, match="a failed"):
        run_graph({"a": (), "b": (), "c": (), "d": ("b",)}, run_one, 2)
    assert sorted(events[:2]) == ["start a", "start b"] and events[2:] == ["end b"]


def test_run_graph_tells_a_node_when_it_runs_alone():
    seen: dict[str, bool] = {}
    lock = threading.Lock()

    def run_one(node: str, alone: bool) -> None:
        with lock:
            seen[node] = alone

    # a and b start together (neither alone); c waits for both, then runs alone
    run_graph({"a": (), "b": (), "c": ("a", "b")}, run_one, workers=2, tell_alone=True)
    assert seen == {"a": False, "b": False, "c": True}
    seen.clear()
    run_graph({"a": (), "b": (), "c": ("a", "b")}, run_one, workers=1, tell_alone=True)
    assert seen == {"a": False, "b": True, "c": True}  # a starts while b is ready and waiting


def test_dependencies_hold_workers_bound_and_a_rerun_skips_everything(tmp_path, settled):
    params = tiny_params(tmp_path)  # both arms, run.workers = 2 (the default)
    assert params.run.workers == 2
    seconds = {"01_warmup_sft": 5, "02_step_search": 4, "03_judging": 2, "04_step_dpo": 1, "05_evaluate": 3}
    fake = FakeNotebooks()
    Simulation(params, fake, seconds, settled).run()
    graph = study_graph(params)
    started = fake.started()
    assert sorted(started) == sorted((t.arm, t.stage, t.k) for t in graph)  # each stage once
    for task, deps in graph.items():
        for d in deps:
            assert fake.index("end", d.arm, d.stage, d.k) < fake.index("start", task.arm, task.stage, task.k), (task, d)
    assert fake.max_running() == 2
    for task in graph:
        layout = layout_for(params, task.seed)
        assert layout.marker_path(task.arm, task.k, task.stage).is_file()
    # every stage done: a second run executes nothing and says so once per stage
    again = FakeNotebooks()
    lines = run_fake(params, again)
    assert again.events == []
    assert sum(line.endswith("done already, skipped") for line in lines) == len(graph)


def test_one_worker_runs_the_critical_path_first(tmp_path):
    fake = FakeNotebooks()
    run_fake(tiny_params(tmp_path, "run.workers=1", "run.arms=[psrlm]"), fake)
    assert fake.max_running() == 1
    assert [(stage[:2], k) for _, stage, k in fake.started()] == [
        ("01", 1), ("02", 1), ("04", 1), ("02", 2), ("04", 2),
        ("06", 1), ("06", 2), ("06", 3),
        ("03", 0), ("05", 0), ("03", 1), ("05", 1), ("03", 2), ("05", 2), ("03", 3), ("05", 3)]


def test_two_workers_judge_and_evaluate_mk_beside_the_search_for_mk_plus_1(tmp_path, settled):
    # one chain: the old per-chain loop ran it strictly in sequence on one worker
    seconds = {"01_warmup_sft": 1, "02_step_search": 6, "03_judging": 12, "04_step_dpo": 1, "05_evaluate": 12,
               ("03_judging", 0): 1, ("05_evaluate", 0): 1}
    fake = FakeNotebooks()
    Simulation(tiny_params(tmp_path, "run.arms=[psrlm]"), fake, seconds, settled).run()
    assert fake.max_running() == 2

    def overlap(a, b):
        return (fake.index("start", *a) < fake.index("end", *b)
                and fake.index("start", *b) < fake.index("end", *a))

    assert overlap(("psrlm", "03_judging", 1), ("psrlm", "02_step_search", 1))
    assert any(overlap(("psrlm", s, 1), ("psrlm", "02_step_search", 2)) for s in ("03_judging", "05_evaluate"))
    # the critical stages never waited for judging/evaluation: each started as soon as its input was
    for a, b in [(("psrlm", "02_step_search", 1), ("psrlm", "04_step_dpo", 1)),
                 (("psrlm", "04_step_dpo", 1), ("psrlm", "02_step_search", 2))]:
        assert fake.events[fake.index("end", *a) + 1] == ("start", b)


def test_first_failure_starts_no_new_stage_lets_running_ones_finish_and_resumes(tmp_path, settled):
    params = tiny_params(tmp_path, "run.arms=[psrlm, srlm]")
    # the SRLM warm-up is still running when the PSRLM search fails
    seconds = {"01_warmup_sft": 1, "02_step_search": 1, ("srlm", "01_warmup_sft"): 12}
    fake = FakeNotebooks(fail=("psrlm", "02_step_search", 1))
    with pytest.raises(StageFailed, match=r"\[psrlm\] 02_step_search M1 failed.*executed notebook"):
        Simulation(params, fake, seconds, settled).run()
    failed_at = fake.events.index(("fail", ("psrlm", "02_step_search", 1)))
    assert fake.events[failed_at + 1:] == [("end", ("srlm", "01_warmup_sft", 1))]
    layout = layout_for(params, 0)
    assert layout.marker_path("srlm", 1, "01_warmup_sft").is_file()  # finished after the failure
    assert layout.marker_path("psrlm", 1, "01_warmup_sft").is_file()
    assert not layout.marker_path("psrlm", 1, "02_step_search").exists()
    # the rerun resumes: the two warm-ups are skipped, everything else runs once
    rerun = FakeNotebooks()
    lines = run_fake(params, rerun)
    assert sorted(line for line in lines if "skipped" in line) == [
        "[psrlm] 01_warmup_sft M1: done already, skipped", "[srlm] 01_warmup_sft M1: done already, skipped"]
    assert len(rerun.started()) == len(study_graph(params)) - 2


def test_the_runner_clears_stale_progress_and_watches_each_running_stage(tmp_path):
    params = tiny_params(tmp_path, "run.arms=[psrlm]", "run.iterations=1", "run.workers=1")
    layout = layout_for(params, 0)
    # a killed run's search left its partial files, kept for the resume, and its last progress
    search_dir = layout.stage_dir("psrlm", 1, "02_step_search")
    search_dir.mkdir(parents=True)
    (search_dir / ".key").write_text(stage_key(params, 0, "psrlm", "02_step_search", 1))
    progress_path(search_dir).write_text('{"phase": "search", "done": 3, "total": 4}')
    seen: list[tuple] = []

    class Board(ProgressBoard):
        def add(self, tag, stage_dir):
            seen.append(("add", tag, read_progress(progress_path(stage_dir))))
            super().add(tag, stage_dir)

        def remove(self, tag):
            seen.append(("remove", tag))
            super().remove(tag)

    def execute(src, dst, parameters, log, tag, start):
        stage_dir = layout.stage_dir(parameters["arm"], parameters["k"], Path(src).stem)
        ProgressWriter(progress_path(stage_dir)).begin("work")(1, 2)  # and never cleaned up
        Path(dst).write_text("{}")

    run_stages("params/tiny.yaml", [], params, log=lambda m: None, execute=execute, board=Board())
    tags = [e[1] for e in seen[::2]]
    assert sorted(t.split(" (")[0] for t in tags) == sorted(f"[psrlm] {s} M{k}" for s, k in plan(params, "psrlm"))
    # one stage at a time: each watched from its start (with no stale file) to its end
    assert seen == [e for tag in tags for e in (("add", tag, None), ("remove", tag))]
    assert not list(tmp_path.rglob(PROGRESS_FILE))  # nothing left that a later run could show


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    out = finish(psr_run(results, "ref"))
    return results / "ref", out


@pytest.mark.slow
def test_smoke_study_writes_every_arm_iteration_and_benchmark(reference):
    root, out = reference
    m = json.loads((root / "metrics.json").read_text())
    assert set(m["arms"]) == {"psrlm", "srlm", "verified"}
    for arm, models in m["arms"].items():
        assert set(models) == {"M0", "M1", "M2", "M3"}  # M0: psrlm's stages, shown for every arm
        for name, cell in models.items():
            acc = cell["eval"]["synthetic"]["accuracy"]
            assert 0 <= acc <= 100 and cell["eval"]["synthetic"]["n"] == 8
            if arm != "verified" or name == "M1":  # the verified arm is never judged (its M1 is psrlm's)
                for key in ("accuracy", "position_consistency", "parse_rate"):
                    assert 0 <= cell["judge"][key] <= 100
            if "same_model_as" not in cell:
                assert "05_evaluate" in cell["wall_s"]
        for k in ("M1", "M2"):
            assert models[k]["search"]["questions"] == 4
            assert "dpo" in models[k]
            assert models[k]["pairs"]["n"] == models[k]["search"]["pairs"]  # diagnosed with the answer key
        assert set(m["gains"][arm]["synthetic"]) >= {"from", "to", "mean", "per_seed"}
    # the verified arm starts from psrlm's M1 and pairs right steps over wrong ones only
    verified, psrlm = m["arms"]["verified"], m["arms"]["psrlm"]
    assert verified["M1"]["same_model_as"] == "psrlm" and verified["M1"]["eval"] == psrlm["M1"]["eval"]
    assert "03_judging" not in verified["M1"]["wall_s"] and "judge" not in verified["M2"]
    assert verified["M1"]["search"]["judge_calls"] == 0
    for k in ("M1", "M2"):
        pairs = verified[k]["pairs"]
        assert pairs["n"] == 0 or pairs["right_over_wrong"] == 100.0
        assert pairs["own_scores"]["n"] == 0 or pairs["own_scores"]["accuracy"] == 100.0
        assert psrlm[k]["pairs"]["own_verdicts"]["n"] >= 0 and "own_scores" in m["arms"]["srlm"][k]["pairs"]
    assert m["code"]["commit"] and isinstance(m["code"]["dirty"], bool)
    # the warm-up taught the formats: verdicts and scores parse, so there were pairs for DPO to use
    assert m["arms"]["psrlm"]["M1"]["judge"]["parse_rate"] > 50
    assert m["arms"]["srlm"]["M1"]["search"]["score_parse_rate"] > 50
    assert sum(m["arms"][a][k]["search"]["pairs"] for a in m["arms"] for k in ("M1", "M2")) > 0
    for a in m["arms"]:
        for k in ("M1", "M2"):
            assert m["arms"][a][k]["dpo"]["pairs"] == m["arms"][a][k]["search"]["pairs"]
    for f in ("report.md", "accuracy_by_iteration.png", "judge_by_iteration.png", "steps_by_iteration.png",
              "pairs_by_iteration.png", "07_report.ipynb", "psrlm/M1/01_warmup_sft.ipynb",
              "psrlm/M0/model/manifest.json", "psrlm/M0/05_evaluate.ipynb", "psrlm/M3/06_test_time_scaling.ipynb",
              "srlm/M3/05_evaluate.ipynb", "verified/M3/05_evaluate.ipynb", "verified/M1/02_step_search/diagnostics.json"):
        assert (root / f).is_file(), f
    assert not (root / "verified" / "M1" / "model").exists() and (root / "verified" / "M2" / "model").is_dir()
    report = (root / "report.md").read_text()
    assert "PSRLM-M3" in report and "VERIFIED-M1 (= PSRLM-M1)" in report and "Pair diagnostics" in report
    assert "| SRLM-M0 (= PSRLM-M0) |" in report and "| M0 (3-shot) |" in report
    assert "| PSRLM-M3 | step search |" in report and "| SRLM-M1 | step search |" not in report
    assert m["arms"]["psrlm"]["M0"]["judge"]["shots"] == 3 and "test_time" not in m["arms"]["srlm"]["M1"]
    for k in ("M1", "M2", "M3"):  # the test set has 8 problems, fewer than test_time.problems
        scaled = m["arms"]["psrlm"][k]["test_time"]["synthetic"]
        assert scaled["n"] == 8 and scaled["search"]["mean_tokens"] > 0 and 0 <= scaled["search"]["accuracy"] <= 100
        assert scaled["greedy"]["accuracy"] == m["arms"]["psrlm"][k]["eval"]["synthetic"]["accuracy"]  # same problems
    # a second run finds every stage done and only rewrites the report
    again = finish(psr_run(root.parent, "ref"))
    assert again.count("skipped") == 16 + 11 + 6 and "running" not in again.replace("07_report: running", "")


def notebook_outputs(path: Path) -> str:
    """Everything an executed notebook shows (markdown, HTML, text; `image` for a figure);
    fails on a cell that raised."""
    nb = json.loads(path.read_text())
    shown = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path}: {out.get('ename')}: {out.get('evalue')}"
            data = out.get("data", {})
            shown += ["".join(data.get(k, "")) for k in ("text/markdown", "text/html", "text/plain")]
            shown += ["image"] if "image/png" in data else []
            shown += ["".join(out.get("text", ""))]
    return "\n".join(shown)


@pytest.mark.slow
def test_smoke_notebooks_tell_each_stage_story_on_the_runs_own_data(reference):
    root, _ = reference
    search = notebook_outputs(root / "verified" / "M1" / "02_step_search.ipynb")
    assert "#### Expansion 1: step 1, " in search and "judge, slot A" not in search  # scored by the key
    for arm in ("psrlm", "srlm"):
        warmup = notebook_outputs(root / arm / "M1" / "01_warmup_sft.ipynb")
        assert "records per data file" in warmup and "image" in warmup  # counts and the loss curve
        assert "**ift-" in warmup and "Step 1:" in warmup and "(gold " in warmup
        search = notebook_outputs(root / arm / "M1" / "02_step_search.ipynb")
        assert "search statistics" in search
        if arm == "srlm":
            assert "scores of the 2 solutions" in search
        else:  # one question's search tree
            assert "#### Expansion 1: step 1, " in search and " expansions: " in search
        judging = notebook_outputs(root / arm / "M2" / "03_judging.ipynb")
        assert "judged right in both orders" in judging and "judged wrong in at least one order" in judging
        dpo = notebook_outputs(root / arm / "M1" / "04_step_dpo.ipynb")
        assert ("**‖**" in dpo and "prompt tokens are a prefix of prompt + chosen: yes" in dpo
                and "(as it should" in dpo and "WRONG" not in dpo) or "no preference pairs" in dpo
        evaluation = notebook_outputs(root / arm / "M3" / "05_evaluate.ipynb")
        assert "<th>right ✓</th><th>wrong ✗</th>" in evaluation
    scaling = notebook_outputs(root / "psrlm" / "M2" / "06_test_time_scaling.ipynb")
    assert "search tokens / problem" in scaling and "<th>search ✓ greedy ✗</th>" in scaling
    # the stages' progress files went with their stages
    assert not list(root.rglob(".progress.json*"))


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_gives_the_same_metrics(reference, tmp_path):
    ref_root, _ = reference
    proc = psr_run(tmp_path, "killed", start_new_session=True)
    marker = tmp_path / "killed" / "psrlm" / "M1" / ".02_step_search.done.json"
    deadline = time.time() + 400
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the run never got past the first search"
    time.sleep(4)  # now inside a later stage (03/04), kernels running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    finish(psr_run(tmp_path, "killed"))
    a = json.loads((ref_root / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert comparable(a) == comparable(b)


def test_warm_kernels_are_reused_with_a_clean_namespace_and_replaced_after_a_failure(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "py"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 0\nfail = False", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os\nassert 'leftover' not in globals()\nleftover = x\n"
                                          "pid = os.getpid()\nassert not fail, 'asked to fail'")]
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    kernels = WarmKernels(cwd=tmp_path)

    def pid_of(i: int, fail: bool = False) -> int:
        execute_notebook(src, tmp_path / f"out{i}.ipynb", {"x": i, "fail": fail}, lambda m: None, f"nb{i}", 0.0, kernels=kernels)
        out = nbformat.read(tmp_path / f"out{i}.ipynb", as_version=4)
        return int(out.cells[-1]["outputs"][0]["data"]["text/plain"]) if out.cells[-1]["outputs"] else -1

    try:
        nb.cells[-1].source += "\npid"
        nbformat.write(nb, src)
        first, second = pid_of(0), pid_of(1)
        assert first == second > 0  # the same kernel process ran both, and the second saw no leftover
        with pytest.raises(StageFailed, match="nb2 failed"):
            pid_of(2, fail=True)
        assert (tmp_path / "out2.failed.ipynb").exists()
        assert pid_of(3) != first  # a failed stage's kernel is not reused
    finally:
        kernels.shutdown()
