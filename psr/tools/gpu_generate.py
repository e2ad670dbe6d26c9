"""`psr gpu-check --mode generate`: generated tokens per second of each generation backend that
runs on this machine, on the same random checkpoint and the same prompts.

Backends (`--backends`, default: every one that can run here):
- `hf-4bit`: `psr.engines.HFGenerator` on the model loaded in 4-bit NF4 (what the QLoRA presets
  generate with on the HF backend); needs bitsandbytes 4-bit on the device.
- `hf-bf16`: `HFGenerator` on the bf16 model (float32 on a CPU) with a large batch budget
  (`--max-tokens-per-batch`).
- `hf-continuous`: transformers' continuous batching (`model.generate_batch`), bf16; its KV page
  size is set under the name this transformers uses (`page_size` where the config has it, with
  `block_size` a deprecated alias; `block_size` in releases before the rename).
- `vllm`: a vLLM server on the checkpoint (`psr.engines.VLLMServer`), when a vLLM environment
  exists (`make vllm-env`).

The checkpoint is built as in `psr gpu-check` (Qwen2.5-Math-7B's architecture with `--arch 7b`,
a small Qwen2 with `--arch tiny`), the prompts are `--prompts` random digit strings of
`--prompt-len` tokens, and every backend decodes them greedily for up to `--new-tokens` tokens. A
random model rarely emits EOS, so the work is about prompts x new tokens for each backend; the
count is what each backend reports generating. The memory column is this process's (on a CPU its
peak RSS): a vLLM server's own memory is not in it. The table is followed by one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from psr.config import ModelParams, PromptParams
from psr.engines import HFGenerator, ServerSettings, VLLMEnvMissing, VLLMServer, vllm_python
from psr.models import load_policy, set_threads
from psr.prompts import Templates
from psr.tools.gpu_check import (NoGPU, PhaseResult, _same_arch, build_random_checkpoint, four_bit_works, measure,
                                 stand_in_tokenizer)

BACKENDS = ("hf-4bit", "hf-bf16", "hf-continuous", "vllm")
DEFAULTS = {"7b": (256, 256, 256), "tiny": (16, 64, 32)}  # (prompts, prompt tokens, new tokens)


def continuous_batching_kwargs(page_size: int, num_blocks: int, max_batch_tokens: int) -> dict[str, Any]:
    """`generate_batch` keyword arguments that size the KV cache: a `ContinuousBatchingConfig`
    whose page-size field is `page_size` (where it has one; `block_size` is then a deprecated
    alias) or `block_size` (releases before the rename), or, before the class existed, the same
    fields on the generation config. The cache is sized here, not left to the library,
    which sizes it from free device memory (on a CPU: most of the RAM)."""
    config_class = getattr(transformers, "ContinuousBatchingConfig", None)
    sizes = {"num_blocks": num_blocks, "max_batch_tokens": max_batch_tokens}
    if config_class is None:
        return {"generation_config_updates": {"block_size": page_size, **sizes}}
    names = {f.name for f in dataclasses.fields(config_class)}
    key = "page_size" if "page_size" in names else "block_size"
    fields = {key: page_size, **{k: v for k, v in sizes.items() if k in names}}
    return {"continuous_batching_config": config_class(**fields)}


def _prompts(n: int, length: int, seed: int = 0) -> list[str]:
    """Digit strings: one token per digit with the stand-in tokenizer."""
    rng = random.Random(seed)
    return ["".join(rng.choice("123456789") for _ in range(length)) for _ in range(n)]


def _available(args, cuda: bool) -> tuple[list[str], dict[str, str]]:
    wanted = args.backends.split(",") if args.backends else list(BACKENDS)
    unknown = sorted(set(wanted) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"psr gpu-check: unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    skipped: dict[str, str] = {}
    if "hf-4bit" in wanted:
        ok, note = four_bit_works("cuda" if cuda else "cpu")
        if not ok:
            skipped["hf-4bit"] = note
    if "vllm" in wanted:
        try:
            vllm_python()
        except VLLMEnvMissing as e:
            skipped["vllm"] = str(e)
    return [b for b in wanted if b not in skipped], skipped


def run_generation(args) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    if args.arch == "7b" and not cuda:
        raise NoGPU("--arch 7b needs a CUDA GPU (use --arch tiny for a CPU smoke test)")
    if not cuda:
        set_threads(args.threads)
    backends, skipped = _available(args, cuda)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="psr-gpu-generate-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "random-base"
    results: list[PhaseResult] = []
    try:
        with measure("build", cuda, results) as r:
            if not (args.keep and (ckpt / "config.json").exists() and _same_arch(ckpt, args.arch)):
                shutil.rmtree(ckpt, ignore_errors=True)
                tokenizer = stand_in_tokenizer(Templates.from_params(PromptParams(style="paper")))
                n_params = build_random_checkpoint(args.arch, tokenizer, ckpt, "cuda" if cuda else "cpu")
                (ckpt / "psr_params.json").write_text(json.dumps({"params": n_params}))
            r.extra["params"] = json.loads((ckpt / "psr_params.json").read_text())["params"]
        prompts = _prompts(args.prompts, args.prompt_len)
        for backend in backends:
            with measure(backend, cuda, results) as r:
                tokens, compute_s, extra = _generate(backend, ckpt, prompts, args, cuda)
                r.tokens, r.compute_s = tokens, compute_s
                r.extra.update(extra)
    finally:
        if not args.keep:
            shutil.rmtree(ckpt if args.work_dir else work, ignore_errors=True)
    return {
        "mode": "generate", "arch": args.arch,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "memory": "cuda_max_allocated" if cuda else "peak_rss",
        "params": results[0].extra["params"], "prompts": args.prompts, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "skipped": skipped,
        "phases": {r.name: r.to_dict() for r in results},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def _generate(backend: str, ckpt: Path, prompts: list[str], args, cuda: bool) -> tuple[int, float, dict]:
    """(tokens generated, seconds they took, notes) of one backend; loading is not timed."""
    dtype = "bfloat16" if cuda else "float32"
    if backend in ("hf-4bit", "hf-bf16"):
        params = ModelParams(kind="pretrained", name_or_path=str(ckpt), dtype=dtype,
                             adapter="qlora" if backend == "hf-4bit" else "none")
        model, tokenizer = load_policy(ckpt, params)
        if cuda and model.device.type != "cuda":  # load_model places only 4-bit models itself
            model.to("cuda")
        generator = HFGenerator(model, tokenizer, args.max_tokens_per_batch)
        generator.generate(prompts[:1], n=1, temperature=0.0, top_p=1.0, max_new_tokens=2, stop=None, seed=0)
        t0 = time.perf_counter()
        out = generator.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=args.new_tokens,
                                 stop=None, seed=0)
        return sum(row[0].n_tokens for row in out), time.perf_counter() - t0, {"max_tokens_per_batch": args.max_tokens_per_batch}
    if backend == "hf-continuous":
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
        if cuda:
            model.to("cuda")
        from_ids = AutoTokenizer.from_pretrained(ckpt)(prompts, add_special_tokens=False)["input_ids"]
        config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False,
                                  eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
        per_request = -(-(args.prompt_len + args.new_tokens) // args.page_size)  # pages a request can fill
        kwargs = continuous_batching_kwargs(args.page_size, per_request * len(prompts) + 1,
                                            min(args.max_tokens_per_batch, 8192))
        for key, value in kwargs.pop("generation_config_updates", {}).items():
            setattr(config, key, value)
        model.generate_batch(from_ids[:1], generation_config=config, max_new_tokens=2, **kwargs)  # first-call costs
        t0 = time.perf_counter()  # from here: the manager's set-up for this batch, then the batch
        out = model.generate_batch(from_ids, generation_config=config, **kwargs)
        tokens = sum(len(o.generated_tokens) for o in out.values())
        option = next(iter(kwargs.values())) if kwargs else None
        name = "page_size" if option is not None and hasattr(option, "page_size") else "block_size"
        return tokens, time.perf_counter() - t0, {"page_option": name, "page_size": args.page_size}
    settings = ServerSettings(dtype=dtype, max_model_len=args.prompt_len + args.new_tokens + 16, enforce_eager=not cuda)
    with VLLMServer(ckpt, settings) as server:
        generator = server.generator(concurrency=256)
        t0 = time.perf_counter()
        out = generator.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=args.new_tokens,
                                 stop=None, seed=0)
        return sum(row[0].n_tokens for row in out), time.perf_counter() - t0, {"startup_s": round(server.startup_s, 1),
                                                                             "build": server.build}


def format_table(report: dict[str, Any]) -> str:
    mem = "peak GPU MiB" if report["memory"] == "cuda_max_allocated" else "peak RSS MiB"
    lines = [f"psr gpu-check --mode generate: arch={report['arch']} device={report['device']} "
             f"params={report['params']:,} prompts={report['prompts']} x {report['prompt_len']} tokens, "
             f"<= {report['new_tokens']} new tokens each (greedy)",
             f"{'backend':<14} {'wall s':>8} {mem:>14} {'tokens':>8} {'tokens/s':>10}"]
    for name, p in report["phases"].items():
        tps = f"{p['tokens_per_s']:>10.1f}" if p["tokens_per_s"] is not None else f"{'-':>10}"
        tokens = f"{p['tokens']:>8d}" if p["tokens"] is not None else f"{'-':>8}"
        lines.append(f"{name:<14} {p['wall_s']:>8.1f} {p['peak_mb'] or 0:>14.1f} {tokens} {tps}")
    for name, why in report["skipped"].items():
        lines.append(f"{name:<14} skipped: {why[:200]}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="psr gpu-check --mode generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("generate",), default="generate")
    parser.add_argument("--arch", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--backends", default="", help=f"comma-separated subset of {','.join(BACKENDS)}")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--max-tokens-per-batch", type=int, default=1 << 20, help="the HF engine's batch budget")
    parser.add_argument("--page-size", type=int, default=None, help="continuous batching's KV page size "
                        "(default 256; 32 with --arch tiny)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on a CPU")
    parser.add_argument("--work-dir", default="")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    prompts, prompt_len, new_tokens = DEFAULTS[args.arch]
    args.prompts = args.prompts or prompts
    args.prompt_len = args.prompt_len or prompt_len
    args.new_tokens = args.new_tokens or new_tokens
    args.page_size = args.page_size or (32 if args.arch == "tiny" else 256)
    for name in ("prompts", "prompt_len", "new_tokens", "max_tokens_per_batch", "page_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_generation(args)
    except NoGPU as e:
        print(f"psr gpu-check: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
