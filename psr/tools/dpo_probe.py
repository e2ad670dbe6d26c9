"""`python -m psr.tools.dpo_probe RUN_DIR SEED ARM K NAME [KEY=VALUE ...]`: one step-DPO of a
finished run redone under other DPO settings, and the model it makes evaluated.

It copies M_k of (SEED, ARM) and the preference pairs it made from RUN_DIR into
`/tmp/probes/NAME`, trains M_k+1 with the run's params plus the overrides (e.g.
`dpo.nll_weight=1.0`), and evaluates it on the run's test set, so the DPO link of the loop can be
measured on the very pairs a run trained on (for the verified arm: pairs the answer key made).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from psr.io import append_jsonl, read_json, write_json
from psr.study import stages
from psr.study.context import Context
from psr.study.layout import PREFERENCE_STAGE

PROBES = Path("/tmp/probes")


def copy_inputs(run_dir: Path, seed: int, arm: str, k: int, dst: Path) -> Path:
    """The run's params.json, the seed's data, M_k and its preference stage, under `dst`."""
    seed_dir = run_dir / f"seed{seed}" if (run_dir / f"seed{seed}").exists() else run_dir
    out_seed = dst / seed_dir.relative_to(run_dir)
    for part in ("data", f"{arm}/M{k}/model", f"{arm}/M{k}/{PREFERENCE_STAGE}"):
        if not (out_seed / part).exists():
            shutil.copytree(seed_dir / part, out_seed / part)
    write_json(dst / "params.json", read_json(run_dir / "params.json"))
    return dst / "params.json"


def probe(run_dir: Path, seed: int, arm: str, k: int, name: str, overrides: list[str]) -> dict:
    params_json = copy_inputs(run_dir, seed, arm, k, PROBES / name)
    base = [f"run.name={name}", f"run.results_dir={PROBES}"]
    ctx = Context.create(params_json, base + overrides, seed, arm, k)
    dpo = stages.dpo_stage(ctx)
    after = Context.create(params_json, base + overrides, seed, arm, k + 1)
    accuracy = stages.evaluate_stage(after)["synthetic"]["accuracy"]
    metrics = dpo["train"].get("metrics", {})
    return {"name": name, "run": str(run_dir), "seed": seed, "arm": arm, "from": f"M{k}", "over": overrides,
            "pairs": dpo["pairs"], "train_loss": metrics.get("train_loss"), "accuracy_after": accuracy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psr.tools.dpo_probe", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("arm")
    parser.add_argument("k", type=int)
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=PROBES / "dpo.jsonl")
    args = parser.parse_args(argv)
    row = probe(args.run_dir, args.seed, args.arm, args.k, args.name, args.overrides)
    print(json.dumps(row), flush=True)
    append_jsonl(args.out, [row])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
