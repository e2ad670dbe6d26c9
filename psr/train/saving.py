"""Saving a trained model as the adapters contract says (`psr.train.adapters`), then its manifest.

One process saves directly. Several processes (`accelerate launch`) each call `Trainer.save_model`
(ZeRO-3 gathers the shards there); after `wait_for_everyone` rank 0 alone merges a LoRA adapter
(reloading the base on its CPU: ZeRO-3 weights are shards, nothing to merge into) and writes the
manifest. The manifest is written last: its presence marks a finished model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from peft import PeftModel
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from psr import lineage
from psr.config import Params
from psr.models import load_model
from psr.train.args import on_gpu

_ADAPTER_TMP = ".adapter"  # where the processes save a LoRA adapter before rank 0 merges it


def save_with_manifest(trainer, result, tokenizer, work: Path, params: Params, world_size: int, t0: float, *,
                       adapter_base: str | None, stage: str, inputs: dict[str, Any], **fields: Any) -> None:
    """Save the trained model into `work` and write the manifest last; with several processes
    every one saves (`_save_distributed`) and rank 0 alone writes the manifest."""
    if world_size == 1:
        kind = _save(trainer.model, tokenizer, work, params, adapter_base)
        per_process = [lineage.peak_memory()]
    else:
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
        device="cuda" if on_gpu() else "cpu",
        world_size=world_size,
        per_device_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
    )


def _save(model, tokenizer, out: Path, params: Params, base: str | None) -> str:
    """Save the trained model into `out`; returns what the directory holds ('full' or 'adapter')."""
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
    """Name the 4-bit base in the saved adapter's config by absolute path."""
    if base is None:
        raise ValueError("an adapter directory needs the base model's path")
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _save_distributed(trainer, tokenizer, out: Path, params: Params, base: str | None) -> str | None:
    """`_save` for one of several processes. Every process calls `trainer.save_model` (under
    ZeRO-3 it gathers the shards onto rank 0, which alone writes); then, after `wait_for_everyone`,
    rank 0 makes the directory look as `_save` makes it and returns its kind; the others None.

    LoRA: the adapter is saved first, then rank 0 reloads the base (`base`: the start model, or
    the base of a start adapter) on its CPU, merges and saves full weights."""
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
    if base is None:
        raise ValueError("merging a LoRA adapter needs the base model's path")
    # ZeRO-3's model-loading hook would partition this rank-0-only load and wait on the others
    unset_hf_deepspeed_config()
    model = load_model(base, params.model, trainable=False)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))


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
