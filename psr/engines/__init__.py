"""Generation engines behind one interface (`Generator`): Hugging Face `generate` with
shared-prefix decoding (`HFGenerator`, `psr.engines.cascade`) and a vLLM server in its own
environment (`VLLMGenerator` over HTTP, `VLLMServer` starting and stopping it).
The library's search, judge and evaluation see only `Generator`; nothing here imports the rest
of `psr`."""

from psr.engines.base import FinishReason, Generator, Sample, check_request, cut_at_stop, derive_seed
from psr.engines.hf import HFGenerator
from psr.engines.vllm import VLLMError, VLLMGenerator
from psr.engines.vllm_server import (LoraModule, ServerSettings, VLLMEnvMissing, VLLMServer, VLLMServerError,
                                     vllm_python)

__all__ = ["FinishReason", "Generator", "HFGenerator", "LoraModule", "Sample", "ServerSettings", "VLLMEnvMissing",
           "VLLMError", "VLLMGenerator", "VLLMServer", "VLLMServerError", "check_request", "cut_at_stop",
           "derive_seed", "vllm_python"]
