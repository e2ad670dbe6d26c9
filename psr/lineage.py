"""Model lineage: every trained model directory (M1, M2, ...) carries a `manifest.json` saying what
made it, and a stage whose manifest matches its inputs is skipped.

A model directory is a normal Hugging Face folder (merged weights, or base + adapter) plus the
manifest. Training happens in a temporary sibling folder; the manifest is written last and the
folder is then renamed into place, so a run killed at any moment (even `kill -9`) never leaves a
directory that looks finished but is not: the target either does not exist or is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping
from psr.io import write_json

MANIFEST = "manifest.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "adapter_model.safetensors")
_TMP_MARK = ".tmp-"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable hash of JSON-able data (training examples, input dicts)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def file_hashes(files: Mapping[str, str | Path] | None) -> dict[str, str]:
    """`{name: sha256}` for the data files a stage read (recorded in its inputs)."""
    return {name: sha256_file(path) for name, path in sorted((files or {}).items())}


def read_manifest(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def model_identity(path_or_name: str | Path) -> str:
    """What a child stage records about its parent: the parent's manifest digest when it has one
    (so retraining a parent with other inputs invalidates every descendant), else the name or
    path as given plus a hash of its config (a plain checkpoint or hub name; weights of a 7B model
    are too large to hash at every resume check)."""
    manifest = read_manifest(path_or_name) if Path(path_or_name).is_dir() else None
    if manifest and "digest" in manifest:
        return "manifest:" + manifest["digest"]
    config = Path(path_or_name) / "config.json"
    if config.is_file():
        return f"dir:{path_or_name}:{sha256_file(config)[:16]}"
    adapter = Path(path_or_name) / "adapter_config.json"
    if adapter.is_file():
        return f"adapter:{path_or_name}:{sha256_file(adapter)[:16]}"
    return f"name:{path_or_name}"


def normalised(obj: Any) -> Any:
    """JSON round trip, so tuples and lists (and int/float keys) compare the way they are stored."""
    return json.loads(json.dumps(obj, sort_keys=True))


def is_complete(model_dir: str | Path, expected_inputs: Mapping[str, Any]) -> bool:
    """True when `model_dir` holds a manifest whose inputs equal `expected_inputs` and weights.
    A missing, unreadable or mismatched manifest means "not done" (never an error)."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest is None or manifest.get("inputs") != normalised(dict(expected_inputs)):
        return False
    return any((model_dir / name).is_file() for name in _WEIGHT_FILES)


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process so far (MiB, from `getrusage`), and the CUDA allocator's
    peak since the last `reset_cuda_peak()` when a GPU is in use."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    cuda_mb = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"peak_rss_mb": round(rss_mb, 1), "cuda_peak_mb": None if cuda_mb is None else round(cuda_mb, 1)}


def reset_cuda_peak() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out_dir: str | Path) -> list[Path]:
    """Remove temporary siblings of `out_dir` left by killed runs (their owning process is gone)."""
    out_dir = Path(out_dir)
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    for tmp in out_dir.parent.glob(f".{out_dir.name}{_TMP_MARK}*"):
        try:
            pid = int(tmp.name[len(f".{out_dir.name}{_TMP_MARK}") :].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def staging(out_dir: str | Path) -> Iterator[Path]:
    """A fresh temporary sibling of `out_dir` to train and save into. The caller writes the manifest
    last (`write_manifest`); on normal exit the folder replaces `out_dir` by a rename, on an
    exception it is deleted. A stale, incomplete `out_dir` is removed just before the rename."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"{tmp}: no {MANIFEST} was written; refusing to publish an unfinished model")
        if out_dir.exists():
            # Only reached when the caller found out_dir incomplete or mismatched: move it aside
            # first, so the rename below is atomic and a crash here leaves no half-state.
            old = out_dir.parent / f".{out_dir.name}{_TMP_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(model_dir: str | Path, *, stage: str, inputs: Mapping[str, Any], **fields: Any) -> dict:
    """Write `manifest.json` (call it last). `digest` identifies this model to its children."""
    inputs = normalised(dict(inputs))
    manifest = {
        "stage": stage,
        "inputs": inputs,
        "digest": sha256_json({"stage": stage, "inputs": inputs})[:16],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        **normalised(fields),
    }
    write_json(Path(model_dir) / MANIFEST, manifest)
    return manifest


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # not installed: nothing to record
            continue
    return out
