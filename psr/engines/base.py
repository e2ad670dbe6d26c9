"""The engine interface every generation backend implements, and what all of them share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

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
    means greedy. Sample j of a prompt depends only on (that prompt's seed, the prompt, j), where
    a prompt's seed is `seeds[i]` when given, else `seed`: never on what else is in the batch, so
    a resumed run (with other batch companions) draws the same samples as an uninterrupted one."""

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

