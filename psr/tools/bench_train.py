"""Training throughput: SFT and step-DPO steps per second and peak memory on a tiny model.

    python -m psr.tools.bench_train --params params/tiny.yaml [--steps 30] [--batch 8]

Each stage runs in a fresh child process, so its peak RSS is its own. The data are a few templated
arithmetic records built here (`tiny_records`), so the benchmark needs no task module or download.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
from pathlib import Path

from psr.records import EFTRecord, IFTRecord, PPDPair
from psr import config, lineage
from psr.models import load_tokenizer
from psr.models import train_tokenizer
from psr.prompts import Templates
from psr.train import sft_examples, step_dpo, step_dpo_examples, warmup_sft


def tiny_records(n: int, seed: int = 0) -> tuple[list[IFTRecord], list[EFTRecord], list[PPDPair]]:
    """`n` templated two-operation problems as IFT records, EFT judge records (one correct and one
    off-by-some step at a random position, both slot orders) and step-wise PPD pairs."""
    rng = random.Random(seed)
    ift, eft, ppd = [], [], []
    for i in range(n):
        a, b, c = rng.randint(1, 30), rng.randint(1, 30), rng.randint(1, 30)
        x = a + b
        y = x - c
        question = f"{a} + {b} - {c}"
        steps = [f"{a} + {b} = {x}", f"{x} - {c} = {y}", f"The answer is \\boxed{{{y}}}."]
        ift.append(IFTRecord(id=f"q{i}", question=question, steps=steps))
        j = rng.randrange(len(steps))
        good = steps[j]
        bad = good.replace(str(x if j == 0 else y), str((x if j == 0 else y) + rng.randint(1, 9)), 1)
        for slot in "AB":
            a_step, b_step = (good, bad) if slot == "A" else (bad, good)
            eft.append(
                EFTRecord(
                    id=f"q{i}-{slot}",
                    question=question,
                    previous_steps=steps[:j],
                    step_a=a_step,
                    step_b=b_step,
                    verdict=slot,
                    judgment=f"A: {a_step} B: {b_step} [[{slot}]]",
                )
            )
        ppd.append(
            PPDPair(
                id=f"q{i}",
                question=question,
                previous_steps=steps[:j],
                chosen=good,
                rejected=bad,
                is_final=j == len(steps) - 1,
                scores=[5, 0],
                iteration=1,
                rejected_is_final=j == len(steps) - 1,
            )
        )
    return ift, eft, ppd


def _stage(params_path: str, stage: str, steps: int, batch: int, workdir: str, queue) -> None:

    params = config.load(params_path)
    section = "warmup" if stage == "sft" else "dpo"
    params = params.replace(
        {
            f"{section}.max_steps": steps,
            f"{section}.batch_size": batch,
            f"{section}.per_device_batch_size": batch,
            f"{section}.learning_rate": 1e-3,
        }
    )
    work = Path(workdir)
    templates = Templates.from_params(params.prompts)
    ift, eft, ppd = tiny_records(64)
    if stage == "sft":
        tok = train_tokenizer(
            [f"{r.question} " + " ".join(r.steps) for r in ift] + [e.judgment for e in eft],
            params.model.vocab_size,
        )
        out = warmup_sft(params, sft_examples(ift, eft, templates, tok), work / "m1", tokenizer=tok, seed=0)
    else:

        tok = load_tokenizer(work / "m1", params.model)
        out = step_dpo(params, work / "m1", step_dpo_examples(ppd, templates, tok), work / "m2", seed=0)
    manifest = lineage.read_manifest(out)
    m = manifest["metrics"]
    queue.put(
        {
            "stage": stage,
            "steps": m["global_steps"],
            "batch": batch,
            "steps_per_s": m.get("train_steps_per_second"),
            "samples_per_s": m.get("train_samples_per_second"),
            "wall_s": manifest["wall_time_s"],
            **manifest["memory"],
        }
    )


def run(params_path: str, steps: int, batch: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory(prefix="psr-bench-") as workdir:
        for stage in ("sft", "dpo"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_stage, args=(params_path, stage, steps, batch, workdir, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"{stage} benchmark failed (exit code {proc.exitcode})")
            rows.append(queue.get(timeout=5))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="psr bench train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params/tiny.yaml")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per stage")
    ap.add_argument("--batch", type=int, default=8, help="batch size (no gradient accumulation)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    rows = run(args.params, args.steps, args.batch)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stage':<6}{'steps':>7}{'batch':>7}{'steps/s':>10}{'samples/s':>11}{'wall s':>9}{'peak RSS MiB':>14}{'CUDA MiB':>10}")
    for r in rows:
        cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
        print(
            f"{r['stage']:<6}{r['steps']:>7}{r['batch']:>7}{r['steps_per_s'] or 0:>10.2f}"
            f"{r['samples_per_s'] or 0:>11.1f}{r['wall_s']:>9.1f}{r['peak_rss_mb']:>14.0f}{cuda:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
