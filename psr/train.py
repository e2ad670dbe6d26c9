"""Warm-up SFT (M0 -> M1) and step-wise DPO (Mk -> Mk+1) as configuration of TRL's trainers.

Text layout (the contract in `psr.prompts`/`psr.steps`):
- policy SFT: prompt = chat_prompt(reasoning_prompt(q)), completion = join_steps(steps) + EOS
- judge SFT:  prompt = chat_prompt(judge_prompt(q, prev, a, b)), completion = judgment + EOS
- step DPO:   prompt = chat_prompt(reasoning_prompt(q)) + prefix_text(prev),
              chosen/rejected = "Step k: content" + ("\\n" if the step is not final else EOS)

EOS: we write it into the text ourselves, where it belongs, and make TRL respect the text:
- SFTTrainer (1.16) appends EOS to a completion only if it does not already end with it, so a
  completion that carries our EOS gets exactly one (tested).
- DPOTrainer (1.16) appends EOS to *every* chosen/rejected that lacks it and has no switch for
  that. A non-final step must not end in EOS (the solution goes on; Step-DPO also leaves it out).
  `StepDPOTrainer` overrides the one hook TRL exposes for data preparation, `_prepare_dataset`:
  it notes which texts ended with EOS *before* TRL touches them, lets TRL prepare the data
  unchanged, then removes the one EOS id TRL appended to the others (and fails loudly if TRL ever
  stops appending it, so a TRL change cannot silently alter the loss).

Adapters (`params.model.adapter`):
- none:  full fine-tuning; the model directory holds full weights.
- lora:  LoRA on a full-precision base, merged into the weights on save (`merge_and_unload`), so
         every M_k is a plain directory and the next round starts from it with a fresh adapter.
- qlora: the base stays 4-bit NF4 and is never rewritten, so M_k = base + adapter: the directory
         holds the adapter (its `adapter_config.json` names the base by absolute path) and the next
         round loads that adapter and continues training it. `psr.models.load_policy` loads it.

Processes (`params.run.accelerate_config`): unset, training runs in the caller's process. Set (the
72B preset: DeepSpeed ZeRO-3 over 8 GPUs), `warmup_sft`/`step_dpo` hand the job to `psr.launch`,
which runs `accelerate launch` in a subprocess; every process then runs `run_sft`/`run_dpo` into
the staging folder the caller made (`lineage.staging`, published by the caller alone, after all
processes exited). The effective batch is per_device_batch_size x gradient accumulation x
processes (`gradient_accumulation`). Every process calls `Trainer.save_model` (ZeRO-3 gathers the
shards there); after `wait_for_everyone` rank 0 alone merges a LoRA adapter (reloading the base
on its CPU: ZeRO-3 weights are shards, nothing to merge into) and writes the manifest.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from psr import lineage
from psr.config import Params
from psr.models import build_tiny_model, is_adapter_dir, load_model, load_policy, set_threads
from psr.prompts import Templates, chat_prompt
from psr.records import EFTRecord, IFTRecord, PPDPair, SolutionPair, SRLMEFTRecord
from psr.steps import join_steps, prefix_text, render_step

LOG_POINTS = 50  # aim for about this many logged points per training curve


# ---------------------------------------------------------------------------------------------
# Data builders
# ---------------------------------------------------------------------------------------------


def _eos(tokenizer) -> str:
    if not tokenizer.eos_token:
        raise ValueError("tokenizer has no eos_token; the SFT/DPO targets need one to mark the end")
    return tokenizer.eos_token


def _policy_examples(ift: Sequence[IFTRecord], templates: Templates, tokenizer) -> list[dict[str, str]]:
    eos = _eos(tokenizer)
    out = []
    for r in ift:
        if not r.steps:
            raise ValueError(f"IFT record {r.id!r} has no steps")
        out.append(
            {"prompt": chat_prompt(tokenizer, templates.reasoning_prompt(r.question)), "completion": join_steps(r.steps) + eos}
        )
    return out


def sft_examples(
    ift: Sequence[IFTRecord], eft: Sequence[EFTRecord], templates: Templates, tokenizer
) -> list[dict[str, str]]:
    """The warm-up mix: policy examples from IFT, then step-judge examples from EFT."""
    eos = _eos(tokenizer)
    out = _policy_examples(ift, templates, tokenizer)
    for r in eft:
        prompt = templates.judge_prompt(r.question, list(r.previous_steps), r.step_a, r.step_b)
        out.append({"prompt": chat_prompt(tokenizer, prompt), "completion": r.judgment + eos})
    return out


def srlm_sft_examples(
    ift: Sequence[IFTRecord], srlm_eft: Sequence[SRLMEFTRecord], templates: Templates, tokenizer
) -> list[dict[str, str]]:
    """The SRLM baseline's warm-up mix: IFT plus whole-solution 1-5 scoring examples."""
    eos = _eos(tokenizer)
    out = _policy_examples(ift, templates, tokenizer)
    for r in srlm_eft:
        prompt = templates.srlm_prompt(r.question, r.response)
        out.append({"prompt": chat_prompt(tokenizer, prompt), "completion": r.judgment + eos})
    return out


def step_dpo_examples(pairs: Sequence[PPDPair], templates: Templates, tokenizer) -> list[dict[str, str]]:
    """One example per step pair: the prompt is the question plus the earlier steps, chosen and
    rejected are single steps numbered k = len(previous_steps) + 1; only a final step ends in EOS."""
    eos = _eos(tokenizer)
    out = []
    for p in pairs:
        k = len(p.previous_steps) + 1
        prompt = chat_prompt(tokenizer, templates.reasoning_prompt(p.question)) + prefix_text(list(p.previous_steps))
        out.append(
            {
                "prompt": prompt,
                "chosen": render_step(k, p.chosen) + (eos if p.is_final else "\n"),
                "rejected": render_step(k, p.rejected) + (eos if p.rejected_is_final else "\n"),
            }
        )
    return out


def solution_dpo_examples(pairs: Sequence[SolutionPair], templates: Templates, tokenizer) -> list[dict[str, str]]:
    """The SRLM arm: whole solutions, which always end in EOS."""
    eos = _eos(tokenizer)
    return [
        {
            "prompt": chat_prompt(tokenizer, templates.reasoning_prompt(p.question)),
            "chosen": p.chosen + eos,
            "rejected": p.rejected + eos,
        }
        for p in pairs
    ]


def boundary_merges(examples: Sequence[dict[str, str]], tokenizer) -> list[int]:
    """Indices of examples whose prompt's tokens are not a prefix of prompt+completion's tokens,
    i.e. a token merges across the boundary (TRL then silently moves the boundary into the
    prompt). Our layout ends every prompt in a newline so this stays empty; notebooks can check."""
    bad = []
    for i, ex in enumerate(examples):
        prompt_ids = tokenizer(ex["prompt"])["input_ids"]
        for key in ("completion", "chosen", "rejected"):
            if key in ex:
                full = tokenizer(ex["prompt"] + ex[key])["input_ids"]
                if full[: len(prompt_ids)] != prompt_ids:
                    bad.append(i)
                    break
    return bad


# ---------------------------------------------------------------------------------------------
# The one TRL hook: EOS only where the text has it
# ---------------------------------------------------------------------------------------------


def _step_dpo_trainer_class():
    """Built lazily so that importing psr.train does not import TRL (slow)."""
    from trl import DPOTrainer

    class StepDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer, except that chosen/rejected end in EOS only when the given text does."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            eos = self._tokenizer.eos_token
            dataset = dataset.map(
                _mark_eos, fn_kwargs={"eos": eos}, desc=f"Noting EOS in {dataset_name} dataset"
            )
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return dataset.map(
                _drop_added_eos,
                fn_kwargs={"eos_id": self._tokenizer.eos_token_id},
                remove_columns=["chosen_has_eos", "rejected_has_eos"],
                desc=f"Removing EOS from non-final steps in {dataset_name} dataset",
            )

    return StepDPOTrainer


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
                    "TRL's DPO data preparation changed — revisit psr.train.StepDPOTrainer"
                )
            out[f"{side}_ids"] = ids[:-1]
    return out


# ---------------------------------------------------------------------------------------------
# SFT: the same loss with less work per step
# ---------------------------------------------------------------------------------------------


def _sft_trainer_class():
    """Built lazily so that importing psr.train does not import TRL (slow)."""
    from trl import SFTTrainer

    class FastSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer, computing the same loss and gradients (up to float rounding) with less
        work per step: the LM head projects only the positions that have a label
        (`_lm_head_on_labelled_positions`), and a right-padded batch runs under the plain causal
        mask (`_causal_mask_when_right_padded`). On the tiny preset's warm-up (1 CPU thread) a
        step takes ~19% less time. CPU only, where it was measured; on CUDA TRL already projects
        only the labelled positions."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs.get("input_ids")
            if ids is None or ids.device.type != "cpu":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            with _lm_head_on_labelled_positions(), _causal_mask_when_right_padded(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return FastSFTTrainer


_COMPACT_WARNED = False


@contextmanager
def _lm_head_on_labelled_positions() -> Iterator[None]:
    """TRL 1.16's fused LM head (`trl.trainer.utils.add_fused_lm_head`) projects only the positions
    whose label is not -100 where Triton runs (CUDA/XPU); elsewhere, CPU included, it projects every
    position (so that compiled devices such as Neuron keep one tile shape) and zeroes the unlabelled
    ones afterwards. Eager CPU training compiles nothing, so we let it take the first path: on the
    tiny warm-up only ~24% of the padded positions carry a label (prompt and padding carry none),
    and the head was ~20% of a step. The kernel that scores the tiles keeps its own device check,
    so on CPU it still runs in torch. The log-probabilities, the loss and the metrics are the same."""
    global _COMPACT_WARNED
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        if not _COMPACT_WARNED:
            warnings.warn(
                "trl.trainer.utils._use_triton is gone (TRL changed): the SFT LM head scores every "
                "position again (same loss, slower on CPU); revisit psr.train._lm_head_on_labelled_positions"
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
def _causal_mask_when_right_padded(model) -> Iterator[None]:
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
# Training
# ---------------------------------------------------------------------------------------------


def _on_gpu() -> bool:
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
    bf16 = _on_gpu() and torch.cuda.is_bf16_supported()
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


def _lora_config(params: Params):
    from peft import LoraConfig

    lp = params.model.lora
    target = lp.target_modules if isinstance(lp.target_modules, str) else list(lp.target_modules)
    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=target, task_type="CAUSAL_LM")


def _prepare_adapter(model, params: Params):
    """(model, peft_config) for the trainer: a new LoRA unless the model already carries an adapter
    (a QLoRA M_k, whose adapter training continues)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if params.model.adapter == "none" or isinstance(model, PeftModel):
        return model, None
    if params.model.adapter == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.model.gradient_checkpointing)
    return model, _lora_config(params)


def _trainable_snapshot(model) -> dict[str, torch.Tensor]:
    """fp32 copies of a quantised model's trainable weights (a loaded adapter), taken before TRL
    rounds them to bf16, so `_fp32_adapters` can put the exact values back."""
    if not _is_quantized(model):
        return {}
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float32}


def _is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _fp32_adapters(model, snapshot: dict[str, torch.Tensor]) -> None:
    """TRL casts a quantised model's trainable adapter weights to bf16 (QLoRA paper). With the
    paper's learning rates (1e-6, 5e-7) a bf16 weight cannot represent the update (its spacing
    near 0.01 is ~4e-5), so training would silently do nothing; and a loaded adapter (a QLoRA M_k)
    would lose precision before training starts. Keep fp32 master weights, restoring exact values."""
    if not _is_quantized(model):
        return
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = snapshot[name].to(p.device) if name in snapshot else p.data.float()


def _base_of(path: str | Path) -> str:
    """An adapter's base as an absolute path (or a hub name as given)."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)


def _save(model, tokenizer, out: Path, params: Params, base: str | None) -> str:
    """Save the trained model into `out`; returns what the directory holds ('full' or 'adapter')."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and params.model.adapter == "qlora":
        model.save_pretrained(str(out), selected_adapters=["default"])
        _point_adapter_at(out, base)
        kind = "adapter"
    else:
        if isinstance(model, PeftModel):
            model = model.merge_and_unload(adapter_names=["default"])
        model.save_pretrained(str(out))
        kind = "full"
    tokenizer.save_pretrained(str(out))
    return kind


def _point_adapter_at(out: Path, base: str | None) -> None:
    """Name the 4-bit base in the saved adapter's config by absolute path (see module docstring)."""
    import json

    if base is None:
        raise ValueError("an adapter directory needs the base model's path")
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


_ADAPTER_TMP = ".adapter"  # where the processes save a LoRA adapter before rank 0 merges it


def _save_distributed(trainer, tokenizer, out: Path, params: Params, base: str | None) -> str | None:
    """`_save` for one of several processes. Every process calls `trainer.save_model` (under
    ZeRO-3 it gathers the shards onto rank 0, which alone writes); then, after `wait_for_everyone`,
    rank 0 makes the directory look as `_save` makes it and returns its kind; the others None.

    LoRA: the adapter is saved first, then rank 0 reloads the base (`base`: the start model, or
    the base of a start adapter) on its CPU, merges and saves full weights: under ZeRO-3 a process
    holds only shards, so there is nothing in memory to merge into."""
    from peft import PeftModel

    merge = isinstance(trainer.model, PeftModel) and params.model.adapter != "qlora"
    target = out / _ADAPTER_TMP if merge else out
    trainer.save_model(str(target))
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return None
    (out / "training_args.bin").unlink(missing_ok=True)
    for sub in out.iterdir():  # a second adapter (TRL's "ref" copy) saved beside "default"
        if sub.is_dir() and sub.name != _ADAPTER_TMP and (sub / "adapter_config.json").is_file():
            shutil.rmtree(sub)
    if isinstance(trainer.model, PeftModel) and not merge:
        _point_adapter_at(out, base)
        kind = "adapter"
    elif merge:
        _merge_saved_adapter(target, base, params, out)
        shutil.rmtree(target)
        kind = "full"
    else:
        kind = "full"
    tokenizer.save_pretrained(str(out))
    return kind


def _merge_saved_adapter(adapter_dir: Path, base: str | None, params: Params, out: Path) -> None:
    """Rank 0: base + saved LoRA adapter, merged, saved as full weights into `out`."""
    from peft import PeftModel
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    if base is None:
        raise ValueError("merging a LoRA adapter needs the base model's path")
    # ZeRO-3's model-loading hook would partition this rank-0-only load and wait on the others
    unset_hf_deepspeed_config()
    model = load_model(base, params.model, trainable=False)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))


def _adapter_base(start: str | Path | None) -> str | None:
    """The 4-bit base an adapter trained from `start` refers to: the base of `start` when it is an
    adapter directory (training continues on it), else `start` itself."""
    import json

    if start is None:
        return None
    if is_adapter_dir(start):
        return json.loads((Path(start) / "adapter_config.json").read_text())["base_model_name_or_path"]
    return _base_of(start)


def _metrics(log_history: list[dict], train_output) -> dict[str, Any]:
    losses = [h["loss"] for h in log_history if "loss" in h]
    out: dict[str, Any] = {
        "train_loss_final": losses[-1] if losses else None,
        "train_loss_mean": train_output.training_loss,
        "global_steps": train_output.global_step,
        **{k: v for k, v in train_output.metrics.items() if isinstance(v, (int, float))},
    }
    for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
        vals = [h[key] for h in log_history if key in h]
        if vals:
            out[key + "_first"] = vals[0]
            out[key + "_final"] = vals[-1]
    return out


def sft_args(params: Params, n_examples: int, output_dir, *, seed: int = 0, world_size: int = 1):
    """TRL's SFTConfig from `params.warmup` (loss on the completion only)."""
    from trl import SFTConfig

    common = _common_args(params.warmup, n_examples, Path(output_dir), seed, params, world_size)
    return SFTConfig(**common, completion_only_loss=True)


def dpo_args(params: Params, n_examples: int, output_dir, *, seed: int = 0, world_size: int = 1):
    """TRL's DPOConfig from `params.dpo`. `dpo.nll_weight > 0` adds TRL's "sft" loss (mean NLL of
    the chosen tokens: what `rpo_alpha` did before TRL 1.0) with that weight."""
    from trl import DPOConfig

    dpo = params.dpo
    loss: dict[str, Any] = dict(loss_type=["sigmoid"])
    if dpo.nll_weight > 0:
        loss = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, dpo.nll_weight])
    common = _common_args(dpo, n_examples, Path(output_dir), seed, params, world_size)
    return DPOConfig(**common, beta=dpo.beta, **loss)


def build_sft_trainer(
    params: Params, model, tokenizer, examples, output_dir, *, peft_config=None, seed=0, callbacks=None, args=None
):
    """TRL's SFTTrainer configured from `params.warmup` (prompt/completion data, loss on the
    completion only). Exposed so tests and notebooks can inspect the prepared dataset. `args`:
    an `sft_args` made earlier (under ZeRO-3 it must exist before the model is loaded)."""
    from datasets import Dataset
    snapshot = _trainable_snapshot(model)
    args = args if args is not None else sft_args(params, len(examples), output_dir, seed=seed)
    trainer = _sft_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(examples)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    _fp32_adapters(trainer.model, snapshot)
    cut = sum(len(ids) >= args.max_length for ids in trainer.train_dataset["input_ids"])
    if cut:
        warnings.warn(f"{cut} of {len(examples)} SFT examples were cut at max_length={args.max_length} (and lose their EOS)")
    return trainer


def build_dpo_trainer(
    params: Params, model, tokenizer, examples, output_dir, *, ref_model=None, peft_config=None, seed=0, callbacks=None,
    args=None,
):
    """`StepDPOTrainer` configured from `params.dpo` (`dpo_args`, or the `args` given)."""
    from datasets import Dataset

    snapshot = _trainable_snapshot(model)
    args = args if args is not None else dpo_args(params, len(examples), output_dir, seed=seed)
    trainer = _step_dpo_trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(list(examples)),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    _fp32_adapters(trainer.model, snapshot)
    dropped = len(examples) - len(trainer.train_dataset)
    if dropped:
        warnings.warn(f"TRL dropped {dropped} of {len(examples)} DPO pairs whose prompt fills max_length={args.max_length}")
    return trainer


def reference_dir(params: Params, m1_dir: str | Path) -> Path | None:
    """The `ref_dir` for `step_dpo` under `dpo.reference`: None (the model the round starts from,
    the paper's reading) for `previous`, M1's directory for `m1`."""
    return Path(m1_dir) if params.dpo.reference == "m1" else None


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return lineage.sha256_json([text, tokenizer.chat_template or ""])[:16]


def sft_inputs(params: Params, examples, *, base, tokenizer=None, seed: int, sources=None) -> dict[str, Any]:
    """What `warmup_sft` depends on; equal inputs mean the finished directory can be reused."""
    return {
        "stage": "warmup_sft",
        "base": "tiny-random" if base is None else lineage.model_identity(base),
        "tokenizer": _tokenizer_hash(tokenizer) if tokenizer is not None else None,
        "examples": lineage.sha256_json(list(examples)),
        "n_examples": len(examples),
        "data_files": lineage.file_hashes(sources),
        "params": params.digest("model", "warmup"),
        "seed": seed,
    }


def dpo_inputs(params: Params, model_dir, examples, *, ref_dir=None, seed: int, sources=None) -> dict[str, Any]:
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


def _start(params: Params, seed: int) -> float:
    from transformers import set_seed

    if not _on_gpu():
        set_threads(params.run.torch_threads)
    lineage.reset_cuda_peak()
    set_seed(seed)
    return time.perf_counter()


def _launch_config(params: Params):
    """The `psr.launch.LaunchConfig` to train under, or None to train in this process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "warmup_sft/step_dpo called inside a multi-process launch: psr.launch starts the processes "
            "itself when run.accelerate_config is set; in a launched process call run_sft/run_dpo"
        )
    if not params.run.accelerate_config:
        return None
    from psr.launch import LaunchConfig

    return LaunchConfig.for_params(params)


def _check_world(args, world_size: int) -> None:
    if args.world_size != world_size:
        raise RuntimeError(
            f"the trainer sees {args.world_size} processes, but training was set up for {world_size} "
            "(gradient accumulation depends on it); check the accelerate config and ACCELERATE_USE_CPU"
        )


def _finish(trainer, result, tokenizer, work: Path, params: Params, world_size: int, t0: float, *,
            adapter_base: str | None, stage: str, inputs: dict[str, Any], **fields: Any) -> None:
    """Save the trained model into `work` and write the manifest last; with several processes
    every one saves (`_save_distributed`) and rank 0 alone writes the manifest."""
    if world_size == 1:
        kind = _save(trainer.model, tokenizer, work, params, adapter_base)
        per_process = [lineage.peak_memory()]
    else:
        from accelerate.utils import gather_object

        per_process = gather_object([lineage.peak_memory()])  # a collective: every process calls it
        kind = _save_distributed(trainer, tokenizer, work, params, adapter_base)
        if kind is None:  # not rank 0
            return
    args = trainer.args
    lineage.write_manifest(
        work,
        stage=stage,
        inputs=inputs,
        **fields,
        content=kind,
        n_train_rows=len(trainer.train_dataset),
        metrics=_metrics(trainer.state.log_history, result),
        log_history=trainer.state.log_history,
        wall_time_s=round(time.perf_counter() - t0, 2),
        memory=lineage.peak_memory(),
        memory_per_process=per_process,
        device="cuda" if _on_gpu() else "cpu",
        world_size=world_size,
        per_device_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
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
    """The training half of `warmup_sft`: train into `work` (a staging folder the caller
    publishes) and write the manifest with `inputs` last. Runs in the caller's process
    (`world_size` 1) or in each of `world_size` processes started by `psr.launch`."""
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
    model, peft_config = _prepare_adapter(model, params)
    trainer = build_sft_trainer(
        params, model, tokenizer, examples, work, peft_config=peft_config, seed=seed, callbacks=callbacks, args=args
    )
    result = trainer.train()
    _finish(
        trainer, result, tokenizer, work, params, world_size, t0, adapter_base=_adapter_base(base),
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
    model, peft_config = _prepare_adapter(model, params)
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
    _finish(
        trainer, result, tokenizer, work, params, world_size, t0, adapter_base=_adapter_base(model_dir),
        stage="step_dpo", inputs=inputs, parent=str(model_dir),
        reference=str(ref_dir if ref_dir is not None else model_dir),
    )


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
) -> Path:
    """M0 -> M1: one SFT run (loss on the completion only) on prompt/completion examples.

    `base=None` builds the tiny random model from `params.model` (needs `tokenizer`); otherwise the
    base is loaded with `load_policy(base, params.model, trainable=True)`. `sources` names the data
    files the examples came from (their hashes go into the manifest). Returns `out_dir`; returns
    at once when it already holds a finished model made from the same inputs. With
    `run.accelerate_config` set, training runs under `accelerate launch` (`psr.launch`; no
    `callbacks` then: they cannot cross into the launched processes)."""
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
    inputs = sft_inputs(params, examples, base=base, tokenizer=tokenizer, seed=seed, sources=sources)
    if lineage.is_complete(out_dir, inputs):
        return out_dir
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
    With `run.accelerate_config` set, training runs under `accelerate launch` (`psr.launch`)."""
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
