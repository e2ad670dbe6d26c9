"""Adapters (`params.model.adapter`):

- none:  full fine-tuning; the model directory holds full weights.
- lora:  LoRA on a full-precision base, merged into the weights on save, so every M_k is a plain
         directory and the next round starts from it with a fresh adapter.
- qlora: the base stays 4-bit NF4 and is never rewritten, so M_k = base + adapter: the directory
         holds the adapter (its `adapter_config.json` names the base by absolute path) and the next
         round loads that adapter and continues training it. `psr.models.load_policy` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training

from psr.config import Params
from psr.models import is_adapter_dir


def _lora_config(params: Params) -> LoraConfig:
    lp = params.model.lora
    target = lp.target_modules if isinstance(lp.target_modules, str) else list(lp.target_modules)
    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=target, task_type="CAUSAL_LM")


def prepare_adapter(model, params: Params) -> tuple[object, LoraConfig | None]:
    """(model, peft_config) for the trainer: a new LoRA unless the model already carries an adapter
    (a QLoRA M_k, whose adapter training continues)."""
    if params.model.adapter == "none" or isinstance(model, PeftModel):
        return model, None
    if params.model.adapter == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=params.model.gradient_checkpointing)
    return model, _lora_config(params)


def trainable_snapshot(model) -> dict[str, torch.Tensor]:
    """fp32 copies of a quantised model's trainable weights (a loaded adapter), taken before TRL
    rounds them to bf16, so `keep_fp32_adapters` can put the exact values back."""
    if not _is_quantized(model):
        return {}
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float32}


def _is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_fp32_adapters(model, snapshot: dict[str, torch.Tensor]) -> None:
    """TRL casts a quantised model's trainable adapter weights to bf16 (QLoRA paper). With the
    paper's learning rates (1e-6, 5e-7) a bf16 weight cannot represent the update (its spacing
    near 0.01 is ~4e-5), so training would silently do nothing; and a loaded adapter (a QLoRA M_k)
    would lose precision before training starts. Keep fp32 master weights, restoring exact values."""
    if not _is_quantized(model):
        return
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = snapshot[name].to(p.device) if name in snapshot else p.data.float()


def adapter_base(start: str | Path | None) -> str | None:
    """The 4-bit base an adapter trained from `start` refers to: the base of `start` when it is an
    adapter directory (training continues on it), else `start` itself (absolute, or a hub name)."""
    if start is None:
        return None
    if is_adapter_dir(start):
        return json.loads((Path(start) / "adapter_config.json").read_text())["base_model_name_or_path"]
    p = Path(start)
    return str(p.resolve()) if p.exists() else str(start)
