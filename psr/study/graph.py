"""The study as a dependency graph of stages, and a scheduler that runs such a graph.

Stages of one (seed, arm) chain, K = `run.iterations` (`plan`):
    [03_judging(M0), 05_evaluate(M0): the base arm's chain only]; 01_warmup_sft(M1);
    for k in 1..K: 02_step_search(Mk), 03_judging(Mk), 04_step_dpo(Mk -> Mk+1), 05_evaluate(Mk),
    [06_test_time_scaling(Mk)]; then 03_judging(MK+1), 05_evaluate(MK+1), [06_test_time_scaling(MK+1)].
M0 is the same model for every arm of a seed, so only `psr.study.arms.base_arm` judges and
evaluates it; 06 runs in the arms that `psr.study.arms.scales_at_test_time`, when
`test_time.problems` > 0. An arm that starts from another arm's M1 (the verified arm, from
psrlm's: `psr.study.arms`) runs no 01/03/05/06 on that M1, and its M1 stages depend on the other
arm's 01_warmup_sft.
A stage needs only the model it reads (`dependencies`): M0 is made before the graph runs
(`psr.study.data.m0_model`), so its stages need nothing; M1 <- 01; M(k+1) <- 04(k); 02(k), 03(k),
05(k), 06(k) <- Mk; 04(k) <- 02(k). Nothing waits for 03/05/06 but the report, so the judging,
evaluation and test-time search of Mk can run beside the search and DPO that make Mk+1: of the
ready stages, the one with the longest estimated path to the end starts first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any, TypeVar

from psr.config import Params
from psr.study.arms import base_arm, model_arm, runs_stage, scales_at_test_time
from psr.study.keys import M0_STAGES, STAGES
from psr.study.layout import TEST_TIME_STAGE


def plan(params: Params, arm: str) -> list[tuple[str, int]]:
    """(stage, k) of one arm's chain, each after the stages it depends on (one valid sequential
    order); the stages `psr.study.arms.runs_stage` leaves out for that arm are not in it."""
    K = params.run.iterations
    test_time = [TEST_TIME_STAGE] if params.test_time.problems and scales_at_test_time(arm) else []
    m0 = [(stage, 0) for stage in M0_STAGES] if arm == base_arm(params.run.arms) else []
    steps: list[tuple[str, int]] = [*m0, ("01_warmup_sft", 1)]
    for k in range(1, K + 1):
        steps += [("02_step_search", k), ("03_judging", k), ("04_step_dpo", k), ("05_evaluate", k)]
        steps += [(stage, k) for stage in test_time]
    steps += [("03_judging", K + 1), ("05_evaluate", K + 1), *((stage, K + 1) for stage in test_time)]
    return [(stage, k) for stage, k in steps if k == 0 or runs_stage(arm, stage, k)]


@dataclass(frozen=True)
class Task:
    """One stage of one chain: a node of the study's dependency graph."""

    seed: int
    arm: str
    stage: str
    k: int


def dependencies(task: Task) -> tuple[Task, ...]:
    """The stages `task` reads the output of: the stage that made its model M_k (another arm's
    warm-up for an arm that starts from that arm's M1; none for M0, made before the graph runs),
    and for step-DPO the search that made its pairs."""
    if task.stage not in STAGES:
        raise ValueError(f"unknown stage {task.stage!r} (stages: {', '.join(STAGES)})")
    if task.stage == "01_warmup_sft":
        return ()
    if task.k == 0 and task.stage in M0_STAGES:
        return ()
    if task.k < 1:
        raise ValueError(f"{task}: k must be >= 1 (M0 has only {', '.join(M0_STAGES)})")
    made_model = (Task(task.seed, model_arm(task.arm, 1), "01_warmup_sft", 1) if task.k == 1
                  else Task(task.seed, task.arm, "04_step_dpo", task.k - 1))
    if task.stage == "04_step_dpo":
        return (made_model, Task(task.seed, task.arm, "02_step_search", task.k))
    return (made_model,)


def study_graph(params: Params) -> dict[Task, tuple[Task, ...]]:
    """Every stage of every (seed, arm) chain, mapped to its dependencies; seeds, arms and `plan`
    order preserved (the tie-break between stages equally urgent)."""
    return {t: dependencies(t) for seed in params.run.seeds for arm in params.run.arms
            for t in (Task(seed, arm, stage, k) for stage, k in plan(params, arm))}


# Rough relative cost of a stage, used only to rank ready stages (see a run's metrics.json wall_s).
STAGE_COST = {"01_warmup_sft": 300.0, "02_step_search": 100.0, "03_judging": 15.0, "04_step_dpo": 15.0,
              "05_evaluate": 15.0, TEST_TIME_STAGE: 20.0}


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

