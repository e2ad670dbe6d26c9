"""Typed, frozen study parameters, read once from a YAML preset and validated before any compute.

A preset is plain YAML whose sections mirror the dataclasses below. `load(path, overrides)` reads
it, applies dotted CLI overrides (`search.width=4`), and fails with a `ConfigError` naming the file
and the key for an unknown key, a wrong type or an out-of-range value. Nothing is written here, so
a bad preset never leaves a half-made run folder behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A preset or override that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class RunParams:
    name: str = "tiny"
    seeds: tuple[int, ...] = (0,)
    arms: tuple[Literal["psrlm", "srlm"], ...] = ("psrlm", "srlm")
    iterations: int = 3  # DPO rounds: M1 -> M(1+iterations); paper: 3 (M1 -> M4)
    results_dir: str = "results"
    torch_threads: int = 1  # one thread per process on a shared CPU (measured 6-70x faster here)
    workers: int = 2  # at most this many stages (notebook kernels) run at once (psr.study.graph)
    # multi-GPU training: an accelerate config file (e.g. DeepSpeed ZeRO-3), relative to the
    # preset file; empty = one process
    accelerate_config: str = ""

    def check(self) -> dict[str, str]:
        errors = {}
        if not self.seeds:
            errors["seeds"] = "needs at least one seed"
        if not self.arms:
            errors["arms"] = "needs at least one arm"
        if len(set(self.arms)) != len(self.arms):
            errors["arms"] = "lists an arm twice"
        if self.iterations < 1:
            errors["iterations"] = "must be >= 1"
        if self.workers < 1:
            errors["workers"] = "must be >= 1"
        elif self.accelerate_config and self.workers > 1:  # two trainings would share every GPU
            errors["workers"] = "must be 1 when run.accelerate_config is set (each training uses every process/GPU)"
        if self.torch_threads < 0:
            errors["torch_threads"] = "must be >= 0 (0 = torch default)"
        if not self.name or "/" in self.name:
            errors["name"] = "must be a non-empty folder name"
        return errors


@dataclass(frozen=True)
class TaskParams:
    """Where questions, IFT/EFT data and test sets come from."""

    kind: Literal["synthetic", "real"] = "synthetic"
    # synthetic task knobs
    min_steps: int = 2
    max_steps: int = 4
    test_max_steps: int = 5  # the held-out test includes problems longer than training
    max_operand: int = 50
    operations: tuple[str, ...] = ("+", "-", "*")
    max_value: int = 999  # every intermediate value stays in [1, max_value]
    max_factor: int = 5  # multiplication is by 2..max_factor
    # question text: `varied` (several sentence templates, names, objects) or `plain` (one
    # template per operation and few names: a tiny from-scratch model finds the operands sooner)
    wording: Literal["varied", "plain"] = "varied"
    n_ift: int = 2000
    n_eft: int = 2000
    n_eft_test: int = 500
    n_test: int = 500
    questions_per_iteration: tuple[int, ...] = (400, 800, 1200)
    # real-data sources (psr.tasks.real); paths or hub names
    ift_source: str = ""
    eft_source: str = ""
    question_source: str = ""
    # SRLM warm-up: how many solution-scoring EFT records
    n_srlm_eft: int = 2000

    def check(self) -> dict[str, str]:
        errors = {}
        if self.min_steps < 1:
            errors["min_steps"] = "must be >= 1"
        if self.max_steps < self.min_steps:
            errors["max_steps"] = "must be >= min_steps"
        if self.test_max_steps < self.max_steps:
            errors["test_max_steps"] = "must be >= max_steps"
        if self.max_operand < 2:
            errors["max_operand"] = "must be >= 2"
        if self.max_value < self.max_operand:
            errors["max_value"] = "must be >= max_operand"
        if self.max_factor < 2:
            errors["max_factor"] = "must be >= 2"
        bad_ops = [op for op in self.operations if op not in ("+", "-", "*")]
        if bad_ops or not self.operations:
            errors["operations"] = f"must be a non-empty subset of + - * (got {list(self.operations)})"
        for name in ("n_ift", "n_eft", "n_eft_test", "n_test", "n_srlm_eft"):
            if getattr(self, name) < 0:
                errors[name] = "must be >= 0"
        if any(q < 1 for q in self.questions_per_iteration):
            errors["questions_per_iteration"] = "every entry must be >= 1"
        return errors


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"

    def check(self) -> dict[str, str]:
        errors = {}
        if self.r < 1:
            errors["r"] = "must be >= 1"
        if not 0 <= self.dropout < 1:
            errors["dropout"] = "must be in [0, 1)"
        return errors


@dataclass(frozen=True)
class ModelParams:
    """The policy M0: a tiny Llama built here, or a real checkpoint by path or hub name."""

    kind: Literal["tiny", "pretrained"] = "tiny"
    name_or_path: str = ""  # for kind=pretrained
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    adapter: Literal["none", "lora", "qlora"] = "none"
    lora: LoraParams = field(default_factory=LoraParams)
    gradient_checkpointing: bool = False
    chat_template: str = ""  # override the tokenizer's template (Jinja text), empty = keep
    # tiny model architecture (kind=tiny)
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 512
    max_position_embeddings: int = 1024

    def check(self) -> dict[str, str]:
        errors = {}
        if self.kind == "pretrained" and not self.name_or_path:
            errors["name_or_path"] = "is required when kind is 'pretrained'"
        if self.hidden_size % max(self.num_heads, 1) != 0:
            errors["hidden_size"] = "must be divisible by num_heads"
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size"):
            if getattr(self, name) < 1:
                errors[name] = "must be >= 1"
        if self.vocab_size < 64:
            errors["vocab_size"] = "must be >= 64 (byte alphabet plus specials)"
        return errors


@dataclass(frozen=True)
class PromptParams:
    """Template overrides. Empty = the built-in template of `psr.prompts`; text with `{...}` fields,
    or `file:relative/path.txt` (relative to the preset file) for the paper's exact wording."""

    style: Literal["paper", "compact"] = "paper"
    reasoning: str = ""
    judge: str = ""
    srlm: str = ""


@dataclass(frozen=True)
class WarmupParams:
    """M0 -> M1: one SFT run on IFT + EFT (paper: 3 epochs, lr 1e-6, batch 32)."""

    epochs: float = 3.0
    learning_rate: float = 1e-6
    batch_size: int = 32  # effective batch = per_device_batch_size * gradient_accumulation
    per_device_batch_size: int = 8
    max_length: int = 1024
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_steps: int = -1
    # batches of similar length waste less compute on padding (IFT and EFT lengths differ ~2x)
    sampling: Literal["random", "group_by_length"] = "random"

    def check(self) -> dict[str, str]:
        return _check_training(self)


@dataclass(frozen=True)
class SearchParams:
    """Step-wise search (paper §3.3: w=6, T=0.5, top_p=0.95, max iteration number 20)."""

    width: int = 6
    temperature: float = 0.5
    top_p: float = 0.95
    max_step_tokens: int = 256
    max_steps: int = 30
    expansion_cap: int = 20
    keep_unfinished: bool = False
    max_tokens_per_batch: int = 32768
    backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: int = 1  # vLLM: GPUs one engine shards the model over (backend=vllm)

    def check(self) -> dict[str, str]:
        errors = {}
        if self.tensor_parallel_size < 1:
            errors["tensor_parallel_size"] = "must be >= 1"
        if self.width < 2:
            errors["width"] = "must be >= 2 (pairwise judging needs two candidates)"
        if self.temperature < 0:
            errors["temperature"] = "must be >= 0"
        if not 0 < self.top_p <= 1:
            errors["top_p"] = "must be in (0, 1]"
        for name in ("max_step_tokens", "max_steps", "expansion_cap", "max_tokens_per_batch"):
            if getattr(self, name) < 1:
                errors[name] = "must be >= 1"
        return errors


@dataclass(frozen=True)
class JudgeParams:
    """Judge decoding (not stated in the paper; greedy is our choice)."""

    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512

    def check(self) -> dict[str, str]:
        errors = {}
        if self.temperature < 0:
            errors["temperature"] = "must be >= 0"
        if self.do_sample and self.temperature == 0:
            errors["temperature"] = "must be > 0 when do_sample is true"
        if self.max_new_tokens < 1:
            errors["max_new_tokens"] = "must be >= 1"
        return errors


@dataclass(frozen=True)
class DPOParams:
    """Step-DPO (paper: 1 epoch, lr 5e-7, batch 32; beta not stated: 0.1 is our choice)."""

    beta: float = 0.1
    epochs: float = 1.0
    learning_rate: float = 5e-7
    batch_size: int = 32
    per_device_batch_size: int = 8
    max_length: int = 2048
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    reference: Literal["previous", "m1"] = "previous"
    nll_weight: float = 0.0  # TRL's rpo_alpha; paper: none
    max_steps: int = -1
    sampling: Literal["random", "group_by_length"] = "random"

    def check(self) -> dict[str, str]:
        errors = _check_training(self)
        if self.beta <= 0:
            errors["beta"] = "must be > 0"
        if self.nll_weight < 0:
            errors["nll_weight"] = "must be >= 0"
        return errors


@dataclass(frozen=True)
class SRLMParams:
    """The SRLM baseline (Yuan et al.): N whole solutions, each scored 1-5 by the model, repeated."""

    n_candidates: int = 4
    n_score_repeats: int = 3
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 1024
    score_max_new_tokens: int = 256

    def check(self) -> dict[str, str]:
        errors = {}
        if self.n_candidates < 2:
            errors["n_candidates"] = "must be >= 2"
        if self.n_score_repeats < 1:
            errors["n_score_repeats"] = "must be >= 1"
        if self.temperature < 0:
            errors["temperature"] = "must be >= 0"
        if not 0 < self.top_p <= 1:
            errors["top_p"] = "must be in (0, 1]"
        return errors


@dataclass(frozen=True)
class EvalParams:
    """Greedy evaluation (paper: GSM8K, MATH, Gaokao2023En, OlympiadBench, AIME24, AMC23)."""

    benchmarks: tuple[str, ...] = ("synthetic",)
    benchmark_dir: str = ""  # Qwen2.5-Math layout; empty = $PSR_BENCHMARK_DIR
    limit: int = 0  # 0 = every problem
    max_new_tokens: int = 2048
    max_tokens_per_batch: int = 65536
    answer_fallback: bool = False  # "the answer is"/last number when no \boxed{}
    grading_timeout_s: float = 3.0
    judge_pairs: str = ""  # held-out step-pair file; empty = the task's own EFT test split
    judge_limit: int = 0

    def check(self) -> dict[str, str]:
        errors = {}
        if not self.benchmarks:
            errors["benchmarks"] = "needs at least one benchmark"
        if self.limit < 0:
            errors["limit"] = "must be >= 0"
        if self.max_new_tokens < 1:
            errors["max_new_tokens"] = "must be >= 1"
        if self.grading_timeout_s <= 0:
            errors["grading_timeout_s"] = "must be > 0"
        return errors


@dataclass(frozen=True)
class Params:
    run: RunParams = field(default_factory=RunParams)
    task: TaskParams = field(default_factory=TaskParams)
    model: ModelParams = field(default_factory=ModelParams)
    prompts: PromptParams = field(default_factory=PromptParams)
    warmup: WarmupParams = field(default_factory=WarmupParams)
    search: SearchParams = field(default_factory=SearchParams)
    judge: JudgeParams = field(default_factory=JudgeParams)
    dpo: DPOParams = field(default_factory=DPOParams)
    srlm: SRLMParams = field(default_factory=SRLMParams)
    eval: EvalParams = field(default_factory=EvalParams)
    source: str = ""  # the preset file this came from (set by load)

    def check(self) -> dict[str, str]:
        """Checks across sections."""
        errors = {}
        if len(self.task.questions_per_iteration) < self.run.iterations:
            errors["task.questions_per_iteration"] = (
                f"needs one pool size per iteration (run.iterations is {self.run.iterations})"
            )
        return errors

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def digest(self, *sections: str) -> str:
        """A short stable hash of the whole params, or of some sections (for stage manifests)."""
        data = self.to_dict()
        data.pop("source", None)
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, overrides: list[str] | dict[str, Any]) -> "Params":
        """A copy with dotted overrides applied and validated (`{"search.width": 4}`)."""
        raw = self.to_dict()
        source = raw.pop("source", "")
        items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
        for key, value in items:
            _set_dotted(raw, key, value, source or "<overrides>")
        return _build(raw, source or "<overrides>")


def _check_training(p: Any) -> dict[str, str]:
    errors = {}
    if p.epochs <= 0:
        errors["epochs"] = "must be > 0"
    if p.learning_rate <= 0:
        errors["learning_rate"] = "must be > 0"
    if p.batch_size < 1 or p.per_device_batch_size < 1:
        errors["batch_size"] = "must be >= 1"
    elif p.batch_size % p.per_device_batch_size != 0:
        errors["batch_size"] = "must be a multiple of per_device_batch_size (gradient accumulation)"
    if p.max_length < 8:
        errors["max_length"] = "must be >= 8"
    if not 0 <= p.warmup_ratio < 1:
        errors["warmup_ratio"] = "must be in [0, 1)"
    return errors


def to_dict(obj: Any) -> Any:
    """Dataclasses to plain JSON-able dicts/lists (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load(path: str | Path, overrides: list[str] | None = None) -> Params:
    """Read, override and validate a preset. Raises ConfigError before any compute."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: preset file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        key, value = _split_override(item)
        _set_dotted(raw, key, value, str(path))
    params = dataclasses.replace(_build(raw, str(path)), source=str(path))
    accel = accelerate_config_path(params)
    if accel is not None and not accel.is_file():
        raise ConfigError(
            f"{path}: run.accelerate_config {params.run.accelerate_config!r}: no such file {accel} "
            "(the path is relative to the preset file)"
        )
    return params


def accelerate_config_path(params: Params) -> Path | None:
    """The accelerate config file `run.accelerate_config` names, or None when training runs in
    the caller's own process. A relative path is relative to the preset file (`params.source`;
    the working directory for params built without a file), like `file:` prompt overrides."""
    value = params.run.accelerate_config
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    return (Path(params.source).parent if params.source else Path(".")) / path


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. search.width=4")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(raw: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(raw: dict, source: str) -> Params:
    return _build_dataclass(Params, raw, source, prefix="")


def _build_dataclass(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(
            f"{source}: unknown key {key!r} (valid keys in {where}: {', '.join(sorted(names - {'source'}))})"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, source, prefix + name)
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if check:
        for key, msg in check().items():
            got = obj
            for part in key.split("."):
                got = getattr(got, part)
            raise ConfigError(f"{source}: {prefix}{key} {msg} (got {got!r})")
    return obj


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{source}: {key} must be {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(arg, value, source, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
