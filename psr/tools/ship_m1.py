"""`psr ship-m1 RUN_DIR --to models/tiny`: copy a run's warm-up models (M1 of every seed and arm
that trains its own) into a folder a preset names as `warmup.shipped`.

The warm-up is the study's most expensive stage on a CPU and the one whose result depends most on
the machine (float differences grow through a from-scratch training), so the embedded study can
start from M1s made once by its own warm-up stage. A shipped M1 is used only when its manifest's
inputs (training examples, tokenizer, model and warm-up params, seed) equal the run's, so a
changed preset retrains instead of using a model of other inputs. `index.json` beside the models
says which run and commit made them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from psr import lineage
from psr.io import read_json, write_json

# what a tiny M1 folder holds that a later stage reads (no optimizer state or checkpoints)
MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "manifest.json")


def warmup_models(run_dir: Path) -> dict[str, Path]:
    """`{"seed<S>/<arm>": model folder}` of every finished warm-up in a run."""
    found = {}
    for model in sorted(Path(run_dir).glob("seed*/*/M1/model")):
        manifest = lineage.read_manifest(model)
        if manifest and manifest.get("stage") == "warmup_sft":
            found[f"{model.parts[-4]}/{model.parts[-3]}"] = model
    return found


def ship(run_dir: Path, to: Path) -> dict:
    """Copy each warm-up model (published atomically, like training publishes one) and write
    `index.json`; returns the index."""
    models = warmup_models(run_dir)
    if not models:
        raise ValueError(f"{run_dir}: no finished warm-up models (seed*/<arm>/M1/model with a warmup_sft manifest)")
    made = run_dir / "params.json"  # written by `psr run`: the commit that made the run
    code = read_json(made).get("code") if made.is_file() else None
    index = {"run": str(run_dir), "code": code, "models": {}}
    for name, model in models.items():
        with lineage.staging(to / name) as tmp:
            for file in sorted(f for f in MODEL_FILES if f != lineage.MANIFEST and (model / f).is_file()):
                shutil.copy2(model / file, tmp / file)
            shutil.copy2(model / lineage.MANIFEST, tmp / lineage.MANIFEST)  # last: it marks the copy complete
        manifest = read_json(to / name / lineage.MANIFEST)
        index["models"][name] = {"digest": manifest["digest"], "created": manifest.get("created"),
                                 "train_loss_final": manifest.get("metrics", {}).get("train_loss_final"),
                                 "wall_time_s": manifest.get("wall_time_s")}
    write_json(to / "index.json", index)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="psr ship-m1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder, e.g. results/tiny")
    parser.add_argument("--to", type=Path, required=True, help="the folder a preset's warmup.shipped names")
    args = parser.parse_args(argv)
    try:
        index = ship(args.run_dir, args.to)
    except (OSError, ValueError) as e:
        print(f"psr ship-m1: {e}", file=sys.stderr)
        return 2
    for name, info in index["models"].items():
        print(f"{args.to / name}: digest {info['digest']}, final loss {info['train_loss_final']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
