"""vLLM as the engine (GPU), imported only when constructed so the package loads without vLLM."""

from __future__ import annotations

from pathlib import Path

from psr.engines.base import FinishReason, Sample, check_request, derive_seed


class VLLMGenerator:
    """The same interface on vLLM (GPU), imported only when constructed so this module loads
    without vLLM. Each prompt gets its own seed (from its seed and its text), so results do
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
        seeds: list[int] | None = None,
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
                seed=derive_seed(seeds[i] if seeds is not None else seed, prompts[i]),
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

