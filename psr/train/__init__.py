"""Warm-up SFT (M0 -> M1) and step-wise DPO (M_k -> M_k+1) as configuration of TRL's trainers.

examples: training texts from records; trainers: TRL's trainers, adjusted; args: their
arguments; adapters, saving: what a model directory holds; run: one training run; launch,
worker: that run under `accelerate launch`; stages: `warmup_sft`/`step_dpo`, resumable.
"""

from psr.train.args import dpo_args, gradient_accumulation, sft_args, warmup_steps
from psr.train.examples import (
    boundary_merges,
    sft_examples,
    solution_dpo_examples,
    srlm_sft_examples,
    step_dpo_examples,
)
from psr.train.launch import LaunchError, LaunchFailed
from psr.train.run import run_dpo, run_sft
from psr.train.stages import dpo_inputs, reference_dir, sft_inputs, shipped_m1, step_dpo, warmup_sft
from psr.train.trainers import StepDPOTrainer, build_dpo_trainer, build_sft_trainer

__all__ = [
    "LaunchError",
    "LaunchFailed",
    "StepDPOTrainer",
    "boundary_merges",
    "build_dpo_trainer",
    "build_sft_trainer",
    "dpo_args",
    "dpo_inputs",
    "gradient_accumulation",
    "reference_dir",
    "run_dpo",
    "run_sft",
    "sft_args",
    "sft_examples",
    "sft_inputs",
    "shipped_m1",
    "solution_dpo_examples",
    "srlm_sft_examples",
    "step_dpo",
    "step_dpo_examples",
    "warmup_sft",
    "warmup_steps",
]
