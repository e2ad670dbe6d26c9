"""The run's task data (one folder per seed, shared by every arm), the M0 tokenizer and M0 itself."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from psr import lineage
from psr.config import Params
from psr.io import read_json, read_jsonl, write_json
from psr.models import build_tiny_model, load_tokenizer, resolve_model_name, train_tokenizer
from psr.prompts import Templates
from psr.study.arms import base_arm
from psr.study.layout import Layout
from psr.tasks.data import corpus, write_task
from psr.tasks.real import build_real_task
from psr.tasks.synthetic import build_task as build_synthetic
from psr.teacher import load_teacher


def teacher_cache(root: Path) -> Path:
    """The teacher's output cache of a run (shared by its seeds and by `psr build-eft`)."""
    return Path(root) / "teacher" / "cache.jsonl"


def prepare_data(params, layout: Layout, log=print) -> Path:
    """Task files (+ the tiny model's tokenizer) for one seed, shared by both arms. Built into a
    temporary folder and renamed into place, so a folder that exists is complete."""
    data_dir = layout.data_dir
    digest = params.digest("task", "model", "prompts")
    manifest = data_dir / "manifest.json"
    if manifest.exists() and read_json(manifest).get("digest") == digest:
        return data_dir
    t0 = time.perf_counter()
    tmp = data_dir.with_name(f".{data_dir.name}.building")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    templates = Templates.for_params(params)
    task = build_task(params, layout.seed, teacher_cache(layout.root))
    write_task(task, tmp)
    if params.model.kind == "tiny":
        train_tokenizer(corpus(task, templates), params.model.vocab_size, tmp / "tokenizer")
    counts = {name: len(getattr(task, name)) for name in ("ift", "eft", "eft_test", "test", "srlm_eft")}
    counts["pools"] = [len(p) for p in task.pools]
    manifest_data = {"digest": digest, "seed": layout.seed, "counts": counts}
    provenance = getattr(task, "provenance", None)
    if provenance:  # the real task: who wrote EFT judgments and IFT steps (psr.study.report shows it)
        manifest_data["provenance"] = provenance
    write_json(tmp / "manifest.json", {**manifest_data, "wall_s": round(time.perf_counter() - t0, 2)})
    if data_dir.exists():
        shutil.rmtree(data_dir)
    os.replace(tmp, data_dir)
    log(f"[seed {layout.seed}] data ready in {data_dir} ({time.perf_counter() - t0:.1f}s): {counts}")
    return data_dir


def build_task(params, seed: int, cache: Path | None = None):
    """The task's splits; the real task loads the teacher model when the preset asks for one."""
    if params.task.kind == "synthetic":
        return build_synthetic(params.task, seed)
    teacher = None
    if params.task.needs_teacher:
        teacher = load_teacher(params.task.teacher, Templates.for_params(params), cache)
    return build_real_task(params, seed, teacher)


def load_records(data_dir: Path, name: str, record_type):
    return read_jsonl(Path(data_dir) / f"{name}.jsonl", record_type)


def m0_tokenizer(params: Params, layout: Layout):
    """The M0 tokenizer: trained with the data (tiny) or the pretrained model's own."""
    source = layout.data_dir / "tokenizer" if params.model.kind == "tiny" else params.model.name_or_path
    return load_tokenizer(source, params.model)


def m0_model(params: Params, layout: Layout) -> Path:
    """M0, the model before warm-up, as a folder (or a hub name) to load like any M_k.

    A real preset's M0 is its base model, as the preset names it: nothing is copied. The tiny
    preset's is the random model its warm-up starts from, made by the same call (`build_tiny_model`
    with the M0 tokenizer and the seed) and saved once per seed, with a lineage manifest, in the
    base arm's `M0/model/`; the warm-up builds its own copy, so M1 does not depend on this one.
    Published atomically (`lineage.staging`): the folder is complete or absent."""
    if params.model.kind != "tiny":
        return Path(resolve_model_name(params.model.name_or_path))
    out = layout.model_dir(base_arm(params.run.arms), 0)
    inputs = {"stage": "m0", "base": "tiny-random", "data": params.digest("task", "model", "prompts"),
              "seed": layout.seed}
    if lineage.is_complete(out, inputs):
        return out
    tokenizer = m0_tokenizer(params, layout)
    with lineage.staging(out) as tmp:
        build_tiny_model(params.model, tokenizer, layout.seed).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        lineage.write_manifest(tmp, stage="m0", inputs=inputs, note="the random model the warm-up starts from")
    return out
