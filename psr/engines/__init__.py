"""Generation engines behind one interface (`Generator`): Hugging Face `generate` with
shared-prefix decoding (`HFGenerator`, `psr.engines.cascade`) and vLLM (`VLLMGenerator`).
The library's search, judge and evaluation see only `Generator`; nothing here imports the rest
of `psr`."""

from psr.engines.base import FinishReason, Generator, Sample, check_request, cut_at_stop, derive_seed
from psr.engines.hf import HFGenerator
from psr.engines.vllm import VLLMGenerator

__all__ = ["FinishReason", "Generator", "HFGenerator", "Sample", "VLLMGenerator", "check_request",
           "cut_at_stop", "derive_seed"]
