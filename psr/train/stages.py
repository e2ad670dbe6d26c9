"""The two training stages as the study calls them: warm-up SFT (M0 -> M1) and step-DPO
(M_k -> M_k+1). Each returns at once when its output folder already holds a model made from the
same inputs; otherwise it trains into a staging folder (`lineage.staging`) that is published only
when training has finished. Training runs in this process (`psr.train.run`), or under
`accelerate launch` (`psr.train.launch`) when `run.accelerate_config` is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from psr import lineage
from psr.config import Params
from psr.train.launch import LaunchConfig
from psr.train.run import run_dpo, run_sft


def reference_dir(params: Params, m1_dir: str | Path) -> Path | None:
    """The `ref_dir` for `step_dpo` under `dpo.reference`: None (the model the round starts from,
    the paper's reading) for `previous`, M1's directory for `m1`."""
    return Path(m1_dir) if params.dpo.reference == "m1" else None


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return lineage.sha256_json([text, tokenizer.chat_template or ""])[:16]


def sft_inputs(params: Params, examples, *, base, tokenizer=None, seed: int, sources=None,
               phase2: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `warmup_sft` depends on; equal inputs mean the finished directory can be reused.
    `phase2`: the settings of a second warm-up phase that continues from `base` (on-policy EFT
    negatives); recorded under their own key, so a two-phase M1 never matches a one-phase one."""
    inputs = {
        "stage": "warmup_sft",
        "base": "tiny-random" if base is None else lineage.model_identity(base),
        "tokenizer": _tokenizer_hash(tokenizer) if tokenizer is not None else None,
        "examples": lineage.sha256_json(list(examples)),
        "n_examples": len(examples),
        "data_files": lineage.file_hashes(sources),
        "params": _warmup_digest(params),
        "seed": seed,
    }
    if phase2 is not None:
        inputs["phase2"] = dict(phase2)
    return inputs


# not part of phase 1's digest: where a copy of M1 lies (`shipped`) and the second phase's
# settings (in `phase2` instead), so a phase 1 is a one-phase M1 of the same preset
NOT_IN_WARMUP_DIGEST = ("shipped", "own_negatives_steps", "own_negatives_share", "own_negatives_temperature")


def _warmup_digest(params: Params) -> str:
    """`params.digest("model", "warmup")` without the fields of `NOT_IN_WARMUP_DIGEST`: a shipped
    M1 matches the run that made it, and phase 1 of a two-phase warm-up is the one-phase M1 of
    the same preset (a shipped one serves as M1a)."""
    data = params.to_dict()
    for name in NOT_IN_WARMUP_DIGEST:
        data["warmup"].pop(name, None)
    data = {s: data[s] for s in ("model", "warmup")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def shipped_m1(shipped_dir: str | Path | None, seed: int, arm: str) -> Path:
    """Where a shipped M1 of (seed, arm) lies in a `warmup.shipped` folder."""
    return Path(shipped_dir) / f"seed{seed}" / arm


def _copy_shipped(shipped: Path, out_dir: Path) -> None:
    """Publish a shipped M1 at `out_dir` the way training publishes one (staging, then rename)."""
    with lineage.staging(out_dir) as tmp:
        shutil.copytree(shipped, tmp, dirs_exist_ok=True)


def dpo_inputs(params: Params, model_dir, examples, *, ref_dir=None, seed: int, sources=None) -> dict[str, Any]:
    """What `step_dpo` depends on (see `sft_inputs`)."""
    return {
        "stage": "step_dpo",
        "parent": lineage.model_identity(model_dir),
        "reference": lineage.model_identity(ref_dir if ref_dir is not None else model_dir),
        "examples": lineage.sha256_json(list(examples)),
        "n_examples": len(examples),
        "data_files": lineage.file_hashes(sources),
        "params": params.digest("model", "dpo"),
        "seed": seed,
    }


def _launch_config(params: Params) -> LaunchConfig | None:
    """The launch to train under, or None to train in this process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "warmup_sft/step_dpo called inside a multi-process launch: psr.train.launch starts the processes "
            "itself when run.accelerate_config is set; in a launched process call run_sft/run_dpo"
        )
    if not params.run.accelerate_config:
        return None
    return LaunchConfig.for_params(params)


def warmup_sft(
    params: Params,
    examples: Sequence[dict[str, str]],
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    tokenizer=None,
    seed: int = 0,
    sources: dict[str, str | Path] | None = None,
    callbacks: list | None = None,
    shipped: str | Path | None = None,
    phase2: dict[str, Any] | None = None,
) -> Path:
    """M0 -> M1: one SFT run (loss on the completion only) on prompt/completion examples.

    `base=None` builds the tiny random model from `params.model` (needs `tokenizer`); otherwise the
    base is loaded with `load_policy(base, params.model, trainable=True)`. `sources` names the data
    files the examples came from (their hashes go into the manifest). Returns `out_dir`; returns
    at once when it already holds a finished model made from the same inputs. With
    `run.accelerate_config` set, training runs under `accelerate launch` (no `callbacks` then:
    they cannot cross into the launched processes). `shipped`: a model folder this warm-up made
    before (`warmup.shipped`); when its manifest's inputs equal these, it is copied, not retrained.
    `phase2`: a second warm-up phase's settings (see `sft_inputs`); `base` is then M1a."""
    out_dir = Path(out_dir)
    if not examples:
        raise ValueError("warmup_sft: no training examples")
    if base is None and tokenizer is None:
        raise ValueError("warmup_sft: base=None builds a tiny model and needs the tokenizer")
    if base is None and params.model.adapter != "none":
        raise ValueError(
            "warmup_sft: LoRA/QLoRA needs a saved base model directory (base=...); "
            "the tiny random model is trained in full (model.adapter: none)"
        )
    inputs = sft_inputs(params, examples, base=base, tokenizer=tokenizer, seed=seed, sources=sources, phase2=phase2)
    if lineage.is_complete(out_dir, inputs):
        return out_dir
    if shipped is not None:
        if lineage.is_complete(shipped, inputs):
            _copy_shipped(Path(shipped), out_dir)
            return out_dir
        print(f"warmup_sft: {shipped} is not an M1 of these inputs (other params, data, tokenizer or "
              "seed, or no such folder): training M1 from scratch")
    launch = _launch_config(params)
    if launch is None:
        with lineage.staging(out_dir) as tmp:
            run_sft(params, examples, tmp, inputs=inputs, base=base, tokenizer=tokenizer, seed=seed, callbacks=callbacks)
        return out_dir
    launch.check(params, "warmup_sft", callbacks)  # before any process starts or folder is made
    with lineage.staging(out_dir) as tmp:
        launch.run("warmup_sft", params, examples, tmp, out_dir, inputs=inputs, seed=seed, base=base, tokenizer=tokenizer)
    return out_dir


def step_dpo(
    params: Params,
    model_dir: str | Path,
    examples: Sequence[dict[str, str]],
    out_dir: str | Path,
    *,
    ref_dir: str | Path | None = None,
    seed: int = 0,
    sources: dict[str, str | Path] | None = None,
    callbacks: list | None = None,
) -> Path:
    """M_k -> M_k+1: DPO on (prompt, chosen, rejected) examples — single steps for PSRLM
    (`step_dpo_examples`), whole solutions for the SRLM arm (`solution_dpo_examples`).

    The reference is `ref_dir`, or the starting model `model_dir` when None (the paper's default,
    `dpo.reference: previous`); for `dpo.reference: m1` the caller passes M1's directory.
    Returns `out_dir`, at once when it already holds a finished model from the same inputs.
    With `run.accelerate_config` set, training runs under `accelerate launch`."""
    out_dir = Path(out_dir)
    if not examples:
        raise ValueError("step_dpo: no training pairs")
    inputs = dpo_inputs(params, model_dir, examples, ref_dir=ref_dir, seed=seed, sources=sources)
    if lineage.is_complete(out_dir, inputs):
        return out_dir
    launch = _launch_config(params)
    if launch is None:
        with lineage.staging(out_dir) as tmp:
            run_dpo(params, model_dir, examples, tmp, inputs=inputs, ref_dir=ref_dir, seed=seed, callbacks=callbacks)
        return out_dir
    launch.check(params, "step_dpo", callbacks)
    with lineage.staging(out_dir) as tmp:
        launch.run("step_dpo", params, examples, tmp, out_dir, inputs=inputs, seed=seed, model_dir=model_dir, ref_dir=ref_dir)
    return out_dir
