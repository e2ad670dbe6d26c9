"""Stage keys: what a stage's result depends on, so a re-run skips finished stages and resumes
an interrupted one.

A key hashes the stage's name, seed, arm, k, the params sections it reads and the key of the stage
that made its input model (another arm's warm-up for the verified arm's M1; for M0, which no stage
makes, the data and model settings it is built from). A stage is skipped when its done-marker
holds the same key; otherwise it runs, keeping its partial files only when they were made for the
same key. Markers are written last and atomically, so a `kill -9` never leaves a stage that looks
done but is not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from psr.config import Params
from psr.io import read_json
from psr.study.arms import model_arm
from psr.study.layout import Layout

# the params sections each stage reads
STAGES = {
    "01_warmup_sft": ("task", "model", "prompts", "warmup"),
    "02_step_search": ("task", "search", "judge", "srlm"),
    "03_judging": ("judge", "eval"),
    "04_step_dpo": ("dpo",),
    "05_evaluate": ("eval",),
    "06_test_time_scaling": ("search", "judge", "eval", "test_time"),
}
# the stages that also run on M0, and the params sections they read there beyond their own
M0_STAGES = {"03_judging": ("m0",), "05_evaluate": ()}

# the stages that generate with M_k (through `search.backend`), and the vLLM settings that change
# what a server generates (not where its environment is, how long it may take to start, ...)
GENERATING = ("02_step_search", "03_judging", "05_evaluate", "06_test_time_scaling")
VLLM_OUTPUT_FIELDS = ("request_seeds", "adapter", "max_model_len", "enforce_eager", "chunked_prefill")


def stage_key(params: Params, seed: int, arm: str, stage: str, k: int) -> str:
    """Hash of what a stage's result depends on (see module docstring)."""
    upstream = model_key(params, seed, arm, k) if stage != "01_warmup_sft" else ""
    if stage == "04_step_dpo":
        upstream += stage_key(params, seed, arm, "02_step_search", k)
    digest = params.digest(*STAGES[stage], *(M0_STAGES.get(stage, ()) if k == 0 else ()))
    if params.search.backend == "vllm" and stage in GENERATING:  # hf keys stay as they were
        digest += json.dumps({f: getattr(params.vllm, f) for f in VLLM_OUTPUT_FIELDS}, sort_keys=True)
    payload = json.dumps(
        [stage, seed, arm, k, digest, upstream, params.run.iterations if stage == "02_step_search" else 0],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_key(params: Params, seed: int, arm: str, k: int) -> str:
    """The key of the stage that made `arm`'s M_k (for M1 of an arm that starts from another
    arm's M1, that arm's warm-up); M0's stands for what it is built from (`psr.study.data.m0_model`)."""
    if k == 0:
        return "m0:" + params.digest("task", "model", "prompts")
    if k == 1:
        return stage_key(params, seed, model_arm(arm, 1), "01_warmup_sft", 1)
    return stage_key(params, seed, arm, "04_step_dpo", k - 1)


def is_done(params: Params, layout: Layout, arm: str, stage: str, k: int) -> bool:
    marker = layout.marker_path(arm, k, stage)
    if not marker.exists():
        return False
    try:
        return read_json(marker).get("key") == stage_key(params, layout.seed, arm, stage, k)
    except ValueError:
        return False



def reset_if_stale(stage_dir: Path, key: str) -> None:
    """Keep a stage's partial files only if they were made for this very key (resume); else wipe."""
    key_file = stage_dir / ".key"
    if stage_dir.exists() and (not key_file.exists() or key_file.read_text().strip() != key):
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        key_file.write_text(key)

