"""The sampling engine: many prompts at once, `n` samples each, with a per-row stop at the step
boundary. The search (strategy) and the judge (scorer) only see the `Generator` protocol, so a
test can plug in a scripted generator and a GPU run can plug in vLLM.

`HFGenerator` wraps Hugging Face `generate` (left padding, KV cache, length-sorted chunks bounded
by `max_tokens_per_batch`). Its stop check is hand-written rather than transformers'
`StopStringCriteria` because that one looks at the tail of the *whole* sequence, prompt included:
a step prompt ends in "\\n", so a model writing "Step 3: " would match "\\nStep " across the
prompt/completion boundary and stop after two tokens. Ours only looks at generated tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Sample:
    """One completion: text without the stop string, tokens generated (stop/EOS token included),
    and why it ended ("stop": the stop string, "eos": end of sequence, "length": the token cap)."""

    text: str
    n_tokens: int
    finish_reason: FinishReason


class Generator(Protocol):
    """The engine interface: `n` samples for every prompt, in prompt order. `temperature == 0`
    means greedy. The same `seed` with the same inputs gives the same samples."""

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: str | None,
        seed: int,
    ) -> list[list[Sample]]: ...


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (Python's `hash` is salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def check_request(prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int) -> None:
    """Bad arguments fail before any compute, with the argument named."""
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings")
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {top_p})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens})")


def cut_at_stop(text: str, stop: str | None) -> tuple[str, bool]:
    """The text before the first stop string, and whether there was one."""
    if stop:
        at = text.find(stop)
        if at >= 0:
            return text[:at], True
    return text, False


class _StopAfterPrompt:
    """Per-row stopping criterion (the `StoppingCriteria` call signature): a row is done once its
    *generated* tokens contain `stop`. Only a short window of the newest tokens is decoded, and
    only for rows still running; `fired[i]` records how many tokens row i had generated then."""

    def __init__(self, tokenizer, stop: str, prompt_len: int, batch_size: int):
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_len = prompt_len
        # Every token decodes to >= 1 character, so an occurrence ending in the newest token lies
        # within len(stop) tokens; 2 more cover a stop string that ends inside a token.
        self.window = len(stop) + 2
        self.fired = [-1] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        cur = input_ids.shape[1]
        start = max(self.prompt_len, cur - self.window)
        rows = [i for i, f in enumerate(self.fired) if f < 0]
        if rows:
            tails = input_ids[rows, start:].tolist()
            for i, text in zip(rows, self.tokenizer.batch_decode(tails, skip_special_tokens=False)):
                if self.stop in text:
                    self.fired[i] = cur - self.prompt_len
        return torch.tensor([f >= 0 for f in self.fired], dtype=torch.bool, device=input_ids.device)


class HFGenerator:
    """Batched Hugging Face `generate`: prompts x n rows, sorted by length, cut into chunks of at
    most `max_tokens_per_batch` (rows x (longest prompt + max_new_tokens)), left padded.

    Sampling is seeded per chunk from (seed, chunk index), so results depend on the inputs and the
    seed, not on timing. Greedy requests decode each distinct prompt once and copy the result."""

    def __init__(self, model, tokenizer, max_tokens_per_batch: int = 32768):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer needs a pad token (psr.models.load_tokenizer sets one)")
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1 (got {max_tokens_per_batch})")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens_per_batch = max_tokens_per_batch
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = set([eos] if eos is not None else [])
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if not ids:
            raise ValueError("tokenizer has no EOS token")
        self.eos_ids = sorted(ids)

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: str | None,
        seed: int,
    ) -> list[list[Sample]]:
        check_request(prompts, n, temperature, top_p, max_new_tokens)
        if not prompts:
            return []
        greedy = temperature == 0
        # Rows to decode: greedy needs each distinct prompt once; sampling needs every sample.
        if greedy:
            distinct = list(dict.fromkeys(prompts))
            rows = distinct
        else:
            rows = [p for p in prompts for _ in range(n)]
        encoded = self.tokenizer(rows, add_special_tokens=False)["input_ids"]
        order = sorted(range(len(rows)), key=lambda i: -len(encoded[i]))
        results: list[Sample | None] = [None] * len(rows)
        for chunk_index, chunk in enumerate(self._chunks(order, encoded, max_new_tokens)):
            torch.manual_seed(derive_seed(seed, chunk_index))
            samples = self._generate_chunk([encoded[i] for i in chunk], greedy, temperature, top_p, max_new_tokens, stop)
            for i, s in zip(chunk, samples):
                results[i] = s
        if greedy:
            by_prompt = dict(zip(distinct, results))
            return [[by_prompt[p]] * n for p in prompts]
        return [results[k * n : (k + 1) * n] for k in range(len(prompts))]  # type: ignore[misc]

    def _chunks(self, order: list[int], encoded: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Longest prompts first; a chunk grows while rows x (its longest prompt + new tokens)
        stays within the budget (always at least one row)."""
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:
            longest = len(encoded[current[0]]) if current else len(encoded[i])
            if current and (len(current) + 1) * (longest + max_new_tokens) > self.max_tokens_per_batch:
                chunks.append(current)
                current = []
            current.append(i)
        if current:
            chunks.append(current)
        return chunks

    def _generate_chunk(
        self, ids: list[list[int]], greedy: bool, temperature: float, top_p: float, max_new_tokens: int, stop: str | None
    ) -> list[Sample]:
        from transformers import StoppingCriteriaList

        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in ids)
        device = self.model.device
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long, device=device)
        criteria = _StopAfterPrompt(self.tokenizer, stop, width, len(ids)) if stop else None
        kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=self.eos_ids,
                stopping_criteria=StoppingCriteriaList([criteria]) if criteria else None,
                **kwargs,
            )
        generated = out[:, width:].tolist()
        samples = []
        for row, toks in enumerate(generated):
            eos_at = next((k for k, t in enumerate(toks) if t in self.eos_ids), None)
            body = toks if eos_at is None else toks[:eos_at]
            text, stopped = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), stop)
            if stopped:
                fired = criteria.fired[row] if criteria else -1
                samples.append(Sample(text, fired if fired > 0 else len(body), "stop"))
            elif eos_at is not None:
                samples.append(Sample(text, eos_at + 1, "eos"))
            else:
                samples.append(Sample(text, len(toks), "length"))
        return samples


class VLLMGenerator:
    """The same interface on vLLM (GPU), imported only when constructed so this module loads
    without vLLM. Each prompt gets its own seed (derived from `seed` and its index), so results do
    not depend on how vLLM schedules the batch. `adapter_dir`: a PEFT LoRA served via LoRARequest."""

    def __init__(self, model_path: str | Path, adapter_dir: str | Path | None = None, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as e:  # pragma: no cover - vllm is optional
            raise ImportError("VLLMGenerator needs vllm (GPU only); use HFGenerator instead") from e
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        if self.adapter_dir:
            llm_kwargs.setdefault("enable_lora", True)
        self.llm = LLM(model=str(model_path), **llm_kwargs)

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: str | None,
        seed: int,
    ) -> list[list[Sample]]:  # pragma: no cover - needs a GPU and vllm
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        check_request(prompts, n, temperature, top_p, max_new_tokens)
        if not prompts:
            return []
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_new_tokens,
                stop=[stop] if stop else None,
                seed=derive_seed(seed, i),
            )
            for i in range(len(prompts))
        ]
        lora = LoRARequest("adapter", 1, self.adapter_dir) if self.adapter_dir else None
        outputs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        results = []
        for out in outputs:
            row = []
            for c in out.outputs:
                if c.finish_reason == "length":
                    reason: FinishReason = "length"
                else:  # vLLM says "stop" for both; stop_reason is None for EOS
                    reason = "eos" if c.stop_reason is None else "stop"
                row.append(Sample(c.text, len(c.token_ids), reason))
            results.append(row)
        return results


def make_generator(backend: str, model, tokenizer, max_tokens_per_batch: int) -> Generator:
    """The engine a preset names (`search.backend`): "hf" wraps a loaded model; "vllm" takes a
    model path (str) in place of the model."""
    if backend == "hf":
        return HFGenerator(model, tokenizer, max_tokens_per_batch)
    if backend == "vllm":
        return VLLMGenerator(model)
    raise ValueError(f"unknown generation backend {backend!r} (expected 'hf' or 'vllm')")
