"""vLLM as the engine: the `Generator` interface over a vLLM server's OpenAI-compatible
completions API (`psr.engines.vllm_server` starts and stops that server).

vLLM runs in its own environment, so this side only speaks HTTP (the standard library's
`urllib`). A call submits all its prompts at once, many requests in flight, so the engine batches
a whole search round (or every judge prompt of it) and its prefix cache shares what the prompts
have in common.

What the HF engine returns, this returns: the text without the stop string, the tokens generated
(the stop-completing token or EOS included), and "stop" / "eos" / "length". Greedy requests
decode each distinct prompt once and copy the result, as `HFGenerator` does. Both ignore the
model's generation config for sampling (every request names temperature, top-p, top-k, min-p and
the penalties), so the two backends sample from the same distribution.

Seeds: with `request_seeds` every prompt carries its own seed, derived from (its seed, its text),
and vLLM seeds sample j with that seed + j, so a sample does not depend on which other prompts
share its batch or on the order requests arrive. Without it, requests carry no seed and sampling
draws from the engine's global generator: samples then depend on how requests happen to be
batched, and a rerun does not reproduce them (greedy output is reproduced either way).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from psr.engines.base import FinishReason, Sample, check_request, cut_at_stop, derive_seed


class VLLMError(RuntimeError):
    """The vLLM server refused a request, answered nonsense, or is gone."""


@dataclass(frozen=True)
class _Request:
    """One HTTP request: prompts that share their sampling settings (and seed, if any)."""

    prompts: list[str]
    n: int
    seed: int | None


class VLLMGenerator:
    """The `Generator` interface on a running vLLM server at `base_url` serving `model`.

    `concurrency`: requests in flight at once (each holds `n` sequences); vLLM schedules what is
    in flight as one batch. `prompts_per_request`: prompts packed into one request when they share
    their settings (greedy decoding, or sampling without per-request seeds)."""

    def __init__(self, base_url: str, model: str, *, request_seeds: bool = True, concurrency: int = 256,
                 prompts_per_request: int = 16, timeout_s: float = 3600.0, explain: Callable[[], str] | None = None):
        if concurrency < 1 or prompts_per_request < 1:
            raise ValueError("concurrency and prompts_per_request must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.request_seeds = request_seeds
        self.concurrency = concurrency
        self.prompts_per_request = prompts_per_request
        self.timeout_s = timeout_s
        self.explain = explain  # what the server's side says when a request fails (its log's error)
        self._context: int | None = None

    def context_length(self) -> int | None:
        """The served model's context length (`/v1/models`), asked once. vLLM refuses a request
        whose `max_tokens` exceeds it, and ends a generation that reaches it ("length")."""
        if self._context is None:
            cards = request_json(f"{self.base_url}/v1/models", None, 60.0).get("data") or []
            lengths = [c.get("max_model_len") for c in cards if c.get("id") == self.model and c.get("max_model_len")]
            self._context = lengths[0] if lengths else 0
        return self._context or None

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
        seeds: list[int] | None = None,
    ) -> list[list[Sample]]:
        check_request(prompts, n, temperature, top_p, max_new_tokens)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt ({len(seeds)} for {len(prompts)} prompts)")
        if not prompts:
            return []
        greedy = temperature == 0
        context = self.context_length()
        settings = {
            "model": self.model,
            "max_tokens": min(max_new_tokens, context) if context else max_new_tokens,
            "temperature": temperature,
            "top_p": top_p if not greedy else 1.0,
            "top_k": 0,  # 0: no top-k cut (vLLM's neutral value)
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "stop": [stop] if stop else [],
            "add_special_tokens": False,  # prompts are complete chat-formatted text, as for HF
            "skip_special_tokens": True,
            "return_token_ids": True,  # n_tokens counts tokens, not characters
        }
        if greedy:
            distinct = list(dict.fromkeys(prompts))
            requests = [_Request(c, 1, None) for c in _chunks(distinct, self.prompts_per_request)]
        elif self.request_seeds:
            base = seeds if seeds is not None else [seed] * len(prompts)
            requests = [_Request([p], n, derive_seed(s, p)) for p, s in zip(prompts, base)]
        else:
            requests = [_Request(c, n, None) for c in _chunks(prompts, self.prompts_per_request)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            answers = list(pool.map(lambda r: self._complete(r, settings, stop), requests))
        rows = [row for answer in answers for row in answer]
        if greedy:
            by_prompt = {p: row[0] for p, row in zip(distinct, rows)}
            return [[by_prompt[p]] * n for p in prompts]
        return rows

    def _complete(self, request: _Request, settings: dict, stop: str | None) -> list[list[Sample]]:
        """The samples of one request, per prompt, in prompt order."""
        body = dict(settings, prompt=request.prompts, n=request.n)
        if request.seed is not None:
            body["seed"] = request.seed
        try:
            answer = request_json(f"{self.base_url}/v1/completions", body, self.timeout_s)
        except VLLMError as e:
            if self.explain is None:
                raise
            raise VLLMError(f"{e}\n{self.explain()}") from None
        choices = sorted(answer.get("choices") or [], key=lambda c: c["index"])
        expected = len(request.prompts) * request.n
        if len(choices) != expected or [c["index"] for c in choices] != list(range(expected)):
            raise VLLMError(f"vLLM answered {len(choices)} choices for {expected} samples")
        samples = [to_sample(c, stop) for c in choices]
        return [samples[i * request.n : (i + 1) * request.n] for i in range(len(request.prompts))]


def to_sample(choice: dict, stop: str | None) -> Sample:
    """A completion choice read the way `HFGenerator` reads a generated row. vLLM reports
    "stop" for both a stop string (`stop_reason` names it) and EOS (`stop_reason` None, or the
    id of an end token taken from the model's generation config)."""
    text, stopped = cut_at_stop(choice["text"], stop)  # vLLM already cut it; kept for certainty
    token_ids = choice.get("token_ids")
    if token_ids is None:
        raise VLLMError("vLLM returned no token_ids (a server older than return_token_ids support?)")
    reason: FinishReason
    if stopped or isinstance(choice.get("stop_reason"), str):
        reason = "stop"
    elif choice.get("finish_reason") == "length":
        reason = "length"
    else:
        reason = "eos"
    return Sample(text, len(token_ids), reason)


def request_json(url: str, body: dict | None, timeout_s: float) -> dict:
    """GET `url` (no body) or POST `body` as JSON; the answer's JSON, or a VLLMError saying what
    the server said."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:2000]
        raise VLLMError(f"vLLM server at {url} answered HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, ConnectionError) as e:
        raise VLLMError(f"no vLLM server answering at {url} ({e}); it may have stopped or crashed: see its log") from None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
