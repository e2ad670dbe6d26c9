"""The training half of warm-up SFT (M0 -> M1) and step-DPO (Mk -> Mk+1): train into a staging
folder the caller publishes, and write the manifest last.

Runs in the caller's process (`world_size` 1) or in each of `world_size` processes started by
`psr.train.launch`; it never decides which (that is `psr.train.stages`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from transformers import set_seed

from psr import lineage
from psr.config import Params
from psr.models import build_tiny_model, is_adapter_dir, load_model, load_policy, set_threads
from psr.train.adapters import adapter_base, prepare_adapter
from psr.train.args import dpo_args, on_gpu, sft_args
from psr.train.saving import save_with_manifest
from psr.train.trainers import build_dpo_trainer, build_sft_trainer


def _start(params: Params, seed: int) -> float:
    if not on_gpu():
        set_threads(params.run.torch_threads)
    lineage.reset_cuda_peak()
    set_seed(seed)
    return time.perf_counter()


def _check_world(args, world_size: int) -> None:
    if args.world_size != world_size:
        raise RuntimeError(
            f"the trainer sees {args.world_size} processes, but training was set up for {world_size} "
            "(gradient accumulation depends on it); check the accelerate config and ACCELERATE_USE_CPU"
        )


def run_sft(
    params: Params,
    examples: Sequence[dict[str, str]],
    work: str | Path,
    *,
    inputs: dict[str, Any],
    base: str | Path | None = None,
    tokenizer=None,
    seed: int = 0,
    callbacks: list | None = None,
    world_size: int = 1,
) -> None:
    """The training half of `warmup_sft`: train into `work` and write the manifest with `inputs`
    last. `base=None` builds the tiny random model from `params.model` with `tokenizer`."""
    work = Path(work)
    t0 = _start(params, seed)
    # the arguments before the model: under ZeRO-3 they make `from_pretrained` build it sharded
    args = sft_args(params, len(examples), work, seed=seed, world_size=world_size)
    _check_world(args, world_size)
    if base is None:
        model = build_tiny_model(params.model, tokenizer, seed)
    else:
        model, loaded_tok = load_policy(base, params.model, trainable=True)
        tokenizer = tokenizer or loaded_tok
    model, peft_config = prepare_adapter(model, params)
    trainer = build_sft_trainer(
        params, model, tokenizer, examples, work, peft_config=peft_config, seed=seed, callbacks=callbacks, args=args
    )
    result = trainer.train()
    save_with_manifest(
        trainer, result, tokenizer, work, params, world_size, t0, adapter_base=adapter_base(base),
        stage="warmup_sft", inputs=inputs, parent=None if base is None else str(base),
    )


def run_dpo(
    params: Params,
    model_dir: str | Path,
    examples: Sequence[dict[str, str]],
    work: str | Path,
    *,
    inputs: dict[str, Any],
    ref_dir: str | Path | None = None,
    seed: int = 0,
    callbacks: list | None = None,
    world_size: int = 1,
) -> None:
    """The training half of `step_dpo` (see `run_sft`)."""
    work = Path(work)
    t0 = _start(params, seed)
    args = dpo_args(params, len(examples), work, seed=seed, world_size=world_size)
    _check_world(args, world_size)
    model, tokenizer = load_policy(model_dir, params.model, trainable=True)
    model, peft_config = prepare_adapter(model, params)
    same_ref = ref_dir is None or Path(ref_dir).resolve() == Path(model_dir).resolve()
    ref_model = None
    if not same_ref:
        ref_model = load_model(ref_dir, params.model, trainable=False)
    elif peft_config is None and not is_adapter_dir(model_dir):
        # Full fine-tuning: an explicit frozen copy of the start model (with an adapter, TRL
        # gets the start model by disabling the new adapter, or from a copy of a loaded one).
        ref_model = load_model(model_dir, params.model, trainable=False)
    trainer = build_dpo_trainer(
        params, model, tokenizer, examples, work,
        ref_model=ref_model, peft_config=peft_config, seed=seed, callbacks=callbacks, args=args,
    )
    result = trainer.train()
    save_with_manifest(
        trainer, result, tokenizer, work, params, world_size, t0, adapter_base=adapter_base(model_dir),
        stage="step_dpo", inputs=inputs, parent=str(model_dir),
        reference=str(ref_dir if ref_dir is not None else model_dir),
    )
