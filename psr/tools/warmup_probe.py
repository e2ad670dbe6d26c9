"""`python -m psr.tools.warmup_probe NAME SEED [KEY=VALUE ...]`: one lever of the tiny study, measured
on its first link only.

It warms up PSRLM's M1 under the preset's settings plus the given overrides (into
`/tmp/probes/NAME`), then measures what decides whether self-rewarding can work: greedy accuracy on
the first 300 test problems (by number of operations), the step judge on 200 held-out pairs, and,
from one search iteration on the first pool, the quality of the pairs it makes (checked with the
answer key after the fact). One JSON line per probe is appended to `--out`. A full study costs
three iterations and both arms; a probe costs a warm-up, so levers can be compared first here.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Callable
from pathlib import Path

from psr.answer_key import SyntheticKey
from psr.diagnostics import step_pair_kinds
from psr.io import append_jsonl, read_jsonl
from psr.policy import Policy
from psr.study import stages
from psr.study.context import Context
from psr.study.data import prepare_data


def measure(ctx: Context, also: Callable[[Policy], dict] | None = None) -> dict:
    """What a probe records about ctx's M1: greedy accuracy (and by number of operations), the
    step judge on held-out pairs, the pairs one search iteration makes (checked with the answer
    key), and whatever `also` measures with the same open policy."""
    with stages.policy_for(ctx) as policy:
        acc = stages.evaluate_stage(ctx, policy)["synthetic"]["accuracy"]
        judge = stages.judging_stage(ctx, policy)
        extra = also(policy) if also else {}
        search = stages.preference_stage(ctx, policy)
    test = {p["id"]: p for p in read_jsonl(ctx.layout.data_dir / "test.jsonl")}
    by_ops = collections.defaultdict(list)
    for row in read_jsonl(ctx.layout.stage_dir("psrlm", 1, "05_evaluate") / "synthetic.jsonl"):
        by_ops[test[row["id"]]["n_ops"]].append(row["correct"])
    pairs = stages.preference_pairs(ctx)
    return dict(acc=acc, acc_by_ops={k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by_ops.items())},
                judge=judge["accuracy"], consistency=judge["position_consistency"], **extra,
                pairs=dict(collections.Counter(step_pair_kinds(pairs, SyntheticKey()))), n_pairs=len(pairs),
                finished=search.get("finished_rate"))


def probe(name: str, seed: int, overrides: list[str], results_dir: str = "/tmp/probes") -> dict:
    base = [f"run.name={name}", f"run.results_dir={results_dir}", f"run.seeds=[{seed}]", "run.arms=[psrlm]",
            "eval.limit=300", "eval.judge_limit=200", "run.iterations=1"]
    ctx = Context.create("params/tiny.yaml", base + overrides, seed, "psrlm", 1)
    t0 = time.perf_counter()
    prepare_data(ctx.params, ctx.layout)
    warm = stages.warmup_stage(ctx)
    out: dict = {"name": name, "seed": seed, "over": overrides, "warm_s": round(time.perf_counter() - t0),
                 "loss_final": warm["train"]["metrics"].get("train_loss_final")}
    out.update(measure(ctx))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psr.tools.warmup_probe", description=__doc__)
    parser.add_argument("name")
    parser.add_argument("seed", type=int)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("/tmp/probes/results.jsonl"))
    args = parser.parse_args(argv)
    row = probe(args.name, args.seed, args.overrides)
    print(json.dumps(row), flush=True)
    append_jsonl(args.out, [row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
