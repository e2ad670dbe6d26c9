"""The teacher: a local model standing in for the paper's o1, which wrote the EFT judgments and
split the IFT solutions into steps. Any model the generation backends serve can play it
(`task.teacher` in a preset); it is prompted with the same templates the policy learns from,
through its own chat template, and decodes greedily.

A teacher job (thousands of judgments from a large model) can run for hours, so its outputs are
remembered in a JSON-lines cache (`CachedGenerator`): a killed build resumes where it stopped,
and `psr run` after `psr build-eft` with the same teacher reuses every judgment without loading
the teacher at all (`DeferredGenerator`).
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Callable

from psr.config import ModelParams, TeacherParams
from psr.engines import Generator, HFGenerator, Sample, ServerSettings, VLLMServer
from psr.io import append_jsonl, jsonl_rows
from psr.lineage import model_identity, sha256_json
from psr.models import load_model, load_tokenizer, resolve_model_name
from psr.policy import Policy
from psr.prompts import Templates


class CachedGenerator:
    """A generator whose greedy single-sample outputs are kept in `path`, keyed by (`identity`,
    prompt, token budget, stop): a prompt asked before is answered from the file. Sampled requests
    pass through uncached (they are meant to differ). `identity` names the model: a cache is only
    valid for the weights that filled it."""

    def __init__(self, generator: Generator, path: str | Path, identity: str):
        self.inner = generator
        self.path = Path(path)
        self.identity = identity
        self.memory: dict[str, Sample] = {}
        if self.path.is_file():
            for _, row in jsonl_rows(self.path):
                self.memory[row["key"]] = Sample(row["text"], row["n_tokens"], row["finish_reason"])
        self.generated = 0  # prompts decoded by this object (cache misses)

    def _key(self, prompt: str, max_new_tokens: int, stop: str | None) -> str:
        return sha256_json([self.identity, prompt, max_new_tokens, stop])

    def generate(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 stop: str | None, seed: int, seeds: list[int] | None = None) -> list[list[Sample]]:
        if temperature != 0 or n != 1:
            return self.inner.generate(prompts, n=n, temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, stop=stop, seed=seed, seeds=seeds)
        keys = [self._key(p, max_new_tokens, stop) for p in prompts]
        todo = list(dict.fromkeys(p for p, k in zip(prompts, keys) if k not in self.memory))
        if todo:
            out = self.inner.generate(todo, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens,
                                      stop=stop, seed=seed)
            rows = []
            for prompt, (sample,) in zip(todo, out):
                key = self._key(prompt, max_new_tokens, stop)
                self.memory[key] = sample
                rows.append({"key": key, "text": sample.text, "n_tokens": sample.n_tokens,
                             "finish_reason": sample.finish_reason})
            append_jsonl(self.path, rows)
            self.generated += len(todo)
        return [[self.memory[k]] for k in keys]


def teacher_model_params(teacher: TeacherParams) -> ModelParams:
    """The teacher as a pretrained checkpoint, loaded whole (no adapter)."""
    return ModelParams(kind="pretrained", name_or_path=teacher.name_or_path, dtype=teacher.dtype,
                       trust_remote_code=teacher.trust_remote_code, chat_template=teacher.chat_template)


def teacher_identity(teacher: TeacherParams) -> str:
    """What a cached output depends on besides its prompt: the weights and the chat template."""
    return sha256_json([model_identity(resolve_model_name(teacher.name_or_path)), teacher.chat_template])


class DeferredGenerator:
    """A generator built on its first call: with every output already cached, the teacher model is
    never loaded (a 72B teacher takes minutes to load)."""

    def __init__(self, build: Callable[[], Generator]):
        self.build = build
        self.inner: Generator | None = None

    def generate(self, prompts: list[str], **kwargs) -> list[list[Sample]]:
        if self.inner is None:
            self.inner = self.build()
        return self.inner.generate(prompts, **kwargs)


def load_teacher(teacher: TeacherParams, templates: Templates, cache_path: str | Path | None = None) -> Policy:
    """The teacher as a `Policy` (generator, its tokenizer, the run's templates) on the backend
    `teacher.backend` names. With `cache_path`, outputs are cached there and the model itself is
    loaded only when a prompt is not in the cache."""
    if not teacher.name_or_path:
        raise ValueError("task.teacher.name_or_path is empty: name the teacher model")
    model_params = teacher_model_params(teacher)
    path = resolve_model_name(teacher.name_or_path)
    tokenizer = load_tokenizer(path, model_params)

    def build() -> Generator:
        if teacher.backend == "vllm":  # pragma: no cover - needs the vLLM environment (make vllm-env)
            settings = ServerSettings(dtype=teacher.dtype, tensor_parallel_size=teacher.tensor_parallel_size,
                                      extra_args=("--trust-remote-code",) if teacher.trust_remote_code else ())
            server = VLLMServer(path, settings).start()
            atexit.register(server.stop)  # the teacher serves the data build that asked for it, then goes
            return server.generator()
        return HFGenerator(load_model(path, model_params), tokenizer, max_tokens_per_batch=teacher.max_tokens_per_batch)

    if cache_path is None:
        return Policy(build(), tokenizer, templates)
    generator = CachedGenerator(DeferredGenerator(build), cache_path, teacher_identity(teacher))
    return Policy(generator, tokenizer, templates)
