"""TRL's trainers, made to respect our texts (`StepDPOTrainer`) and to do less work per SFT step
on CPU (`FastSFTTrainer`).

EOS contract: the text carries EOS where it belongs (`psr.train.examples`).
- SFTTrainer (1.16) appends EOS to a completion only if it does not already end with it, so a
  completion that carries our EOS gets exactly one (tested).
- DPOTrainer (1.16) appends EOS to *every* chosen/rejected that lacks it, with no switch for that,
  but a non-final step must not end in EOS (the solution goes on). `StepDPOTrainer` removes the EOS
  TRL appended to those, and fails loudly if TRL ever stops appending it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import trl.trainer.utils as trl_utils
from datasets import Dataset
from trl import DPOTrainer, SFTTrainer

from psr.config import Params
from psr.train.adapters import keep_fp32_adapters, trainable_snapshot
from psr.train.args import dpo_args, sft_args

# ---------------------------------------------------------------------------------------------
# Step DPO: EOS only where the text has it
# ---------------------------------------------------------------------------------------------


class StepDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer, except that chosen/rejected end in EOS only when the given text does.

    WHY `_prepare_dataset`: it is the one hook TRL exposes for data preparation. We note which
    texts ended with EOS before TRL touches them, let TRL prepare the data unchanged, then remove
    the one EOS id TRL appended to the others."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        eos = self._tokenizer.eos_token
        dataset = dataset.map(_mark_eos, fn_kwargs={"eos": eos}, desc=f"Noting EOS in {dataset_name} dataset")
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        return dataset.map(
            _drop_added_eos,
            fn_kwargs={"eos_id": self._tokenizer.eos_token_id},
            remove_columns=["chosen_has_eos", "rejected_has_eos"],
            desc=f"Removing EOS from non-final steps in {dataset_name} dataset",
        )


def _mark_eos(example: dict, eos: str) -> dict:
    return {"chosen_has_eos": example["chosen"].endswith(eos), "rejected_has_eos": example["rejected"].endswith(eos)}


def _drop_added_eos(example: dict, eos_id: int) -> dict:
    out = {}
    for side in ("chosen", "rejected"):
        ids = example[f"{side}_ids"]
        if not example[f"{side}_has_eos"]:
            if not ids or ids[-1] != eos_id:
                raise RuntimeError(
                    f"expected TRL to have appended EOS ({eos_id}) to the {side} text, found {ids[-3:]}; "
                    "TRL's DPO data preparation changed — revisit psr.train.trainers.StepDPOTrainer"
                )
            out[f"{side}_ids"] = ids[:-1]
    return out


# ---------------------------------------------------------------------------------------------
# SFT: the same loss with less work per step
# ---------------------------------------------------------------------------------------------


class FastSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, computing the same loss and gradients (up to float rounding) with less
    work per step: the LM head projects only the positions that have a label
    (`lm_head_on_labelled_positions`), and a right-padded batch runs under the plain causal
    mask (`causal_mask_when_right_padded`). CPU only: on CUDA TRL already projects only the
    labelled positions."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs.get("input_ids")
        if ids is None or ids.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with lm_head_on_labelled_positions(), causal_mask_when_right_padded(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


_COMPACT_WARNED = False


@contextmanager
def lm_head_on_labelled_positions() -> Iterator[None]:
    """TRL 1.16's fused LM head (`trl.trainer.utils.add_fused_lm_head`) projects only the positions
    whose label is not -100 where Triton runs (CUDA/XPU); elsewhere, CPU included, it projects every
    position (so that compiled devices such as Neuron keep one tile shape) and zeroes the unlabelled
    ones afterwards. Eager CPU training compiles nothing, so we let it take the first path: on the
    tiny warm-up only ~24% of the padded positions carry a label (prompt and padding carry none),
    and the head was ~20% of a step. The kernel that scores the tiles keeps its own device check,
    so on CPU it still runs in torch. The log-probabilities, the loss and the metrics are the same.

    WHY a private name: TRL has no switch for this; if the name goes, we warn and train as TRL does."""
    global _COMPACT_WARNED
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        if not _COMPACT_WARNED:
            warnings.warn(
                "trl.trainer.utils._use_triton is gone (TRL changed): the SFT LM head scores every "
                "position again (same loss, slower on CPU); revisit psr.train.trainers.lm_head_on_labelled_positions"
            )
            _COMPACT_WARNED = True
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def right_padded(mask: torch.Tensor | None) -> bool:
    """Whether every row of a 2-D attention mask is ones then zeros (real tokens, then padding)."""
    if mask is None or mask.dim() != 2 or mask.size(1) == 0:
        return False
    return bool(mask[:, 0].all()) and bool((mask[:, 1:] <= mask[:, :-1]).all())


@contextmanager
def causal_mask_when_right_padded(model) -> Iterator[None]:
    """In a causal model a real token of a right-padded row only attends to earlier real tokens, so
    the padding mask changes nothing the loss sees (padded positions carry no label, and their
    gradients are zero). Without it, transformers builds no 4-D mask and SDPA runs its plain causal
    kernel. Only in training, on full sequences (no cache), and only for masks that really are
    right-padded: generation pads on the left and keeps its mask."""

    def drop_mask(module, args, kwargs):
        if module.training and kwargs.get("past_key_values") is None and right_padded(kwargs.get("attention_mask")):
            kwargs = {**kwargs, "attention_mask": None}
        return args, kwargs

    handle = model.register_forward_pre_hook(drop_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------
# Configured trainers
# ---------------------------------------------------------------------------------------------


def build_sft_trainer(
    params: Params, model, tokenizer, examples, output_dir, *, peft_config=None, seed=0, callbacks=None, args=None
) -> FastSFTTrainer:
    """TRL's SFTTrainer configured from `params.warmup` (prompt/completion data, loss on the
    completion only). Exposed so tests and notebooks can inspect the prepared dataset. `args`:
    an `sft_args` made earlier (under ZeRO-3 it must exist before the model is loaded)."""
    snapshot = trainable_snapshot(model)
    args = args if args is not None else sft_args(params, len(examples), output_dir, seed=seed)
    trainer = FastSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(examples)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    keep_fp32_adapters(trainer.model, snapshot)
    cut = sum(len(ids) >= args.max_length for ids in trainer.train_dataset["input_ids"])
    if cut:
        warnings.warn(f"{cut} of {len(examples)} SFT examples were cut at max_length={args.max_length} (and lose their EOS)")
    return trainer


def build_dpo_trainer(
    params: Params, model, tokenizer, examples, output_dir, *, ref_model=None, peft_config=None, seed=0, callbacks=None,
    args=None,
) -> StepDPOTrainer:
    """`StepDPOTrainer` configured from `params.dpo` (`dpo_args`, or the `args` given)."""
    snapshot = trainable_snapshot(model)
    args = args if args is not None else dpo_args(params, len(examples), output_dir, seed=seed)
    trainer = StepDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(list(examples)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    keep_fp32_adapters(trainer.model, snapshot)
    dropped = len(examples) - len(trainer.train_dataset)
    if dropped:
        warnings.warn(f"TRL dropped {dropped} of {len(examples)} DPO pairs whose prompt fills max_length={args.max_length}")
    return trainer
