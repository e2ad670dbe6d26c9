"""`psr build-eft PARAMS`: the step-pair EFT data of a real-task preset, built on its own.

The preset's teacher (`task.teacher`, any local model the generation backends serve) writes an
analysis and a verdict for every PRM800K step pair in both A/B orders; a pair is kept only when
both verdicts agree with the human labels. Writes `eft.jsonl`, `eft_test.jsonl` and
`manifest.json` (the teacher, pairs judged and kept, the kept rate, the template share, why the
others were dropped) into `--out`. The teacher's outputs are cached where `psr run` looks for them
(`results/<run>/teacher/cache.jsonl`), so a later run of the same preset reuses every judgment,
and a killed build resumes. When the filter keeps fewer pairs than the preset asks for, the
files hold what was kept and the manifest says `short` (the exit status is 1). With `task.eft_judgments: template` the fixed sentences are written
instead (no model is loaded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from psr.config import ConfigError, load
from psr.io import write_json, write_jsonl
from psr.models import set_threads
from psr.prompts import Templates
from psr.study.data import teacher_cache
from psr.study.layout import run_root
from psr.tasks.eft import build_eft, eft_provenance, read_prm_solutions
from psr.tasks.real import benchmark_questions, judgment_writer
from psr.tasks.sources import Source
from psr.teacher import load_teacher


def build(params, seed: int, out: Path, log=print) -> dict:
    """Build, write and return the manifest."""
    t = params.task
    if t.kind != "real":
        raise ConfigError(f"{params.source}: build-eft needs task.kind 'real' (PRM800K step pairs), got {t.kind!r}")
    if not t.eft_source:
        raise ConfigError(f"{params.source}: task.eft_source is empty")
    t0 = time.perf_counter()
    set_threads(params.run.torch_threads)
    teacher = None
    if t.eft_judgments == "teacher":
        log(f"teacher: {t.teacher.name_or_path} ({t.teacher.backend})")
        teacher = load_teacher(t.teacher, Templates.for_params(params), teacher_cache(run_root(params)))
    writer = judgment_writer(params, teacher, seed)
    stats: dict = {}
    banned = benchmark_questions(params)
    stats["benchmark_questions_excluded"] = len(banned)
    solutions = read_prm_solutions(Source(t.eft_source), banned, stats)
    train, test, _ = build_eft(solutions, t.n_eft, t.n_eft_test, seed, writer, stats=stats,
                               batch_pairs=t.teacher.batch_pairs, allow_short=True)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "eft.jsonl", train)
    write_jsonl(out / "eft_test.jsonl", test)
    manifest = {
        "preset": params.source, "seed": seed, "digest": params.digest("task", "prompts"),
        "counts": {"eft": len(train), "eft_test": len(test)},
        "wanted": {"eft_pairs": t.n_eft, "eft_test_pairs": t.n_eft_test},
        "short": len(train) < 2 * t.n_eft or len(test) < t.n_eft_test,
        "eft": eft_provenance(writer, stats, train + test), "stats": stats,
        "teacher_generations": getattr(getattr(teacher, "generator", None), "generated", None),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="psr build-eft", description=__doc__.split("\n")[0])
    ap.add_argument("params", help="a real-task preset, e.g. params/smol.yaml")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    ap.add_argument("--seed", type=int, default=None, help="default: the preset's first seed")
    ap.add_argument("--out", type=Path, default=None, help="default: results/<run>/build-eft/seed<s>")
    args = ap.parse_args(argv)
    params = load(args.params, args.param)
    seed = params.run.seeds[0] if args.seed is None else args.seed
    out = args.out or run_root(params) / "build-eft" / f"seed{seed}"
    manifest = build(params, seed, out)
    e = manifest["eft"]
    print(f"EFT: {manifest['counts']['eft'] // 2} train pairs ({manifest['counts']['eft']} records), "
          f"{manifest['counts']['eft_test']} test pairs; judgments: {e['judgments']}"
          + (f" by {e['teacher']}" if e["teacher"] else "")
          + f"; kept {e['pairs_kept']} of {e['pairs_judged']} judged pairs ({e['kept_rate']}%); "
          f"template share {e['template_share']}% -> {out}")
    if manifest["short"]:
        print(f"psr build-eft: short of the preset's {params.task.n_eft} train / {params.task.n_eft_test} test pairs")
        return 1
    return 0
