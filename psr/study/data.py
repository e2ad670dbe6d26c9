"""The run's task data (one folder per seed, shared by every arm) and the M0 tokenizer."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from psr.config import Params
from psr.io import read_json, read_jsonl, write_json
from psr.models import load_tokenizer, train_tokenizer
from psr.prompts import Templates
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
