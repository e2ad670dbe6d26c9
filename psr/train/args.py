"""TRL's SFTConfig/DPOConfig from a preset's `warmup`/`dpo` section.

The effective batch is per_device_batch_size x gradient accumulation x processes, so the
accumulation depends on how many processes train (`gradient_accumulation`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig, SFTConfig

from psr.config import Params

LOG_POINTS = 50  # aim for about this many logged points per training curve


def on_gpu() -> bool:
    return torch.cuda.is_available()


def gradient_accumulation(section, world_size: int = 1, name: str = "") -> int:
    """Micro-batches per optimizer step so that the effective batch, per_device_batch_size x
    accumulation x world_size processes, equals `section.batch_size` (a WarmupParams/DPOParams);
    a batch_size that does not split that way is an error, not a silently different batch."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    per_step = section.per_device_batch_size * world_size
    if section.batch_size % per_step:
        where = f"{name}." if name else ""
        raise ValueError(
            f"{where}batch_size={section.batch_size} is not divisible by {where}per_device_batch_size="
            f"{section.per_device_batch_size} x {world_size} processes = {per_step}; the effective batch is "
            "per_device_batch_size x gradient accumulation x processes (change batch_size, "
            "per_device_batch_size, or num_processes in the accelerate config)"
        )
    return section.batch_size // per_step


def warmup_steps(ratio: float, total: int) -> int:
    """Learning-rate warm-up steps for a run of `total` optimizer steps, rounded *down*: the
    first warm-up step trains at lr 0, and transformers rounds a ratio up, so a 1-step run (the
    tiny study's first step-DPO: 32 pairs at batch 32) would train at lr 0 and change nothing."""
    return int(ratio * total)


def _common_args(
    section, n_examples: int, out: Path, seed: int, params: Params, world_size: int = 1
) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO, from a WarmupParams/DPOParams section."""
    accum = gradient_accumulation(section, world_size)
    per_epoch = math.ceil(math.ceil(n_examples / (section.per_device_batch_size * world_size)) / accum)
    total = section.max_steps if section.max_steps > 0 else max(1, math.ceil(per_epoch * section.epochs))
    bf16 = on_gpu() and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=str(out),
        num_train_epochs=section.epochs,
        max_steps=section.max_steps,
        learning_rate=section.learning_rate,
        per_device_train_batch_size=section.per_device_batch_size,
        gradient_accumulation_steps=accum,
        lr_scheduler_type=section.lr_scheduler,
        warmup_steps=warmup_steps(section.warmup_ratio, total),
        weight_decay=section.weight_decay,
        max_length=section.max_length,
        logging_steps=max(1, total // LOG_POINTS),
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,  # progress bars stay visible in notebooks
        bf16=bf16,  # never on CPU: bf16 autocast there is slow and TRL turns it on by default
        # the non-deprecated name in transformers 5 (TRL's own default for the old name is True)
        activation_checkpointing=params.model.gradient_checkpointing,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        train_sampling_strategy=section.sampling,
    )


def sft_args(params: Params, n_examples: int, output_dir, *, seed: int = 0, world_size: int = 1) -> SFTConfig:
    """TRL's SFTConfig from `params.warmup` (loss on the completion only)."""
    common = _common_args(params.warmup, n_examples, Path(output_dir), seed, params, world_size)
    return SFTConfig(**common, completion_only_loss=True)


def dpo_args(params: Params, n_examples: int, output_dir, *, seed: int = 0, world_size: int = 1) -> DPOConfig:
    """TRL's DPOConfig from `params.dpo`. `dpo.nll_weight > 0` adds TRL's "sft" loss (mean NLL of
    the chosen tokens: what `rpo_alpha` did before TRL 1.0) with that weight."""
    dpo = params.dpo
    loss: dict[str, Any] = dict(loss_type=["sigmoid"])
    if dpo.nll_weight > 0:
        loss = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, dpo.nll_weight])
    common = _common_args(dpo, n_examples, Path(output_dir), seed, params, world_size)
    return DPOConfig(**common, beta=dpo.beta, **loss)
