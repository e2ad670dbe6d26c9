"""M_k as a vLLM server serves it: which folder, which settings, and the generator on top.

A full model folder (the tiny model, a LoRA run merged on save, full fine-tuning) is served as it
is, with the tokenizer and chat template saved beside its weights. A QLoRA M_k is a 4-bit base
plus an adapter; vLLM serves the adapter on the full-precision base, either merged into a copy of
it (`vllm.adapter: merge`, the default: plain weights, no LoRA kernels at decode time) or loaded
as a LoRA adapter (`vllm.adapter: lora`: no copy on disk). Either way the served policy is the
base in full precision plus the adapter, not the 4-bit base the adapter was trained on: the
usual way a QLoRA model is deployed, and a (small) difference from the HF backend, which
generates with the 4-bit base.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from psr import lineage
from psr.config import ModelParams, Params
from psr.engines import LoraModule, ServerSettings, VLLMGenerator, VLLMServer, vllm_python
from psr.models import is_adapter_dir, resolve_model_name

MERGED_SUFFIX = "-merged"
MERGED_MARKER = "psr-merged.json"  # written last: names the adapter the copy was merged from


def server_settings(params: Params) -> ServerSettings:
    v = params.vllm
    return ServerSettings(
        python=v.python,
        dtype=params.model.dtype,
        tensor_parallel_size=params.search.tensor_parallel_size,
        max_model_len=v.max_model_len,
        gpu_memory_utilization=v.gpu_memory_utilization,
        enforce_eager=v.enforce_eager,
        chunked_prefill={"auto": None, "on": True, "off": False}[v.chunked_prefill],
        request_seeds=v.request_seeds,
        cpu_kvcache_gib=v.cpu_kvcache_gib,
        cpu_threads=v.cpu_threads,
        startup_timeout_s=v.startup_timeout_s,
    )


def vllm_server(model_dir: str | Path, params: Params, *, log_path: str | Path | None = None) -> VLLMServer:
    """A (not yet started) server for M_k in `model_dir`, merging a QLoRA adapter first if the
    settings say so."""
    model_dir = Path(model_dir)
    settings = server_settings(params)
    vllm_python(settings.python)  # no environment: say so before minutes of merging
    if not is_adapter_dir(model_dir):
        return VLLMServer(model_dir, settings, log_path=log_path)
    if params.vllm.adapter == "merge":
        return VLLMServer(merged_copy(model_dir, params.model), settings, log_path=log_path)
    config = json.loads((model_dir / "adapter_config.json").read_text())
    lora = LoraModule("policy-adapter", str(model_dir), int(config.get("r", params.model.lora.r)))
    base = resolve_model_name(config["base_model_name_or_path"])
    return VLLMServer(base, settings, tokenizer=model_dir, lora=lora, log_path=log_path)


def vllm_generator(server: VLLMServer, params: Params) -> VLLMGenerator:
    return server.generator(concurrency=params.vllm.concurrency)


def merged_copy(adapter_dir: str | Path, model: ModelParams) -> Path:
    """`<adapter_dir>-merged/`: the adapter merged into its base loaded in full precision (not in
    4-bit), with the adapter folder's tokenizer. Made once per adapter (its marker names the
    adapter's identity) and written through a staging folder, so a half-written copy is never used."""
    adapter_dir = Path(adapter_dir)
    out = adapter_dir.with_name(adapter_dir.name + MERGED_SUFFIX)
    identity = lineage.model_identity(adapter_dir)
    marker = out / MERGED_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("adapter") == identity:
        return out
    base_name = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    dtype = "auto" if model.dtype == "auto" else getattr(torch, model.dtype)
    # on the CPU: the copy is written to disk, and the GPU stays free for the server
    base = AutoModelForCausalLM.from_pretrained(resolve_model_name(base_name), dtype=dtype,
                                                trust_remote_code=model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=model.trust_remote_code).save_pretrained(str(tmp))
    (tmp / MERGED_MARKER).write_text(json.dumps({"adapter": identity, "base": base_name}))
    del base, merged
    gc.collect()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
