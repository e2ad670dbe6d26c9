"""Model lineage: manifests, the completeness check, and staging that never publishes half a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psr import lineage

INPUTS = {"stage": "step_dpo", "parent": "manifest:abc", "examples": "e1", "params": "p1", "seed": 0, "files": ("a", "b")}


def _finished(out: Path, inputs=INPUTS, weights: str = "model.safetensors") -> Path:
    with lineage.staging(out) as tmp:
        (tmp / weights).write_bytes(b"weights")
        lineage.write_manifest(tmp, stage=inputs["stage"], inputs=inputs, metrics={"train_loss_final": 0.5})
    return out


def test_is_complete_needs_matching_manifest_and_weights(tmp_path):
    out = tmp_path / "m2"
    assert not lineage.is_complete(out, INPUTS)  # missing dir
    _finished(out)
    assert lineage.is_complete(out, INPUTS)
    assert not lineage.is_complete(out, {**INPUTS, "seed": 1})
    assert not lineage.is_complete(out, {k: v for k, v in INPUTS.items() if k != "seed"})
    (out / "model.safetensors").unlink()
    assert not lineage.is_complete(out, INPUTS)  # manifest without weights is not a model


def test_adapter_dir_counts_as_weights(tmp_path):
    out = _finished(tmp_path / "m2", weights="adapter_model.safetensors")
    assert lineage.is_complete(out, INPUTS)


def test_garbled_manifest_is_not_complete(tmp_path):
    out = _finished(tmp_path / "m2")
    (out / lineage.MANIFEST).write_text("{not json")
    assert not lineage.is_complete(out, INPUTS)


def test_manifest_fields_and_digest(tmp_path):
    out = _finished(tmp_path / "m2")
    m = lineage.read_manifest(out)
    assert m["inputs"]["files"] == ["a", "b"]  # stored as JSON, compared the same way
    assert m["metrics"] == {"train_loss_final": 0.5}
    assert "torch" in m["versions"] and len(m["digest"]) == 16
    assert lineage.model_identity(out) == "manifest:" + m["digest"]
    other = _finished(tmp_path / "m3", inputs={**INPUTS, "seed": 7})
    assert lineage.model_identity(other) != lineage.model_identity(out)


def test_model_identity_without_manifest(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert lineage.model_identity(plain).startswith(f"dir:{plain}:")
    assert lineage.model_identity("org/some-model") == "name:org/some-model"


def test_staging_error_leaves_nothing(tmp_path):
    out = tmp_path / "m1"
    with pytest.raises(ZeroDivisionError):
        with lineage.staging(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            1 / 0
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staging_refuses_without_manifest(tmp_path):
    out = tmp_path / "m1"
    with pytest.raises(RuntimeError, match="no manifest.json"):
        with lineage.staging(out) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
    assert not out.exists()


def test_staging_replaces_stale_dir(tmp_path):
    out = tmp_path / "m1"
    out.mkdir()
    (out / "junk.txt").write_text("from an older layout")
    _finished(out)
    assert lineage.is_complete(out, INPUTS)
    assert not (out / "junk.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1"]


def test_clean_stale_keeps_live_owner(tmp_path):
    out = tmp_path / "m1"
    dead = tmp_path / ".m1.tmp-999999999-aaaa"  # no such pid
    live = tmp_path / f".m1.tmp-{os.getpid()}-bbbb"
    dead.mkdir()
    live.mkdir()
    removed = lineage.clean_stale(out)
    assert removed == [dead]
    assert live.exists() and not dead.exists()


def test_peak_memory_reports_rss():
    mem = lineage.peak_memory()
    assert mem["peak_rss_mb"] > 10
    assert "cuda_peak_mb" in mem


def test_file_hashes(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text("x\n")
    h1 = lineage.file_hashes({"ppd": a})
    a.write_text("y\n")
    assert lineage.file_hashes({"ppd": a}) != h1
    assert lineage.file_hashes(None) == {}


_KILL_SCRIPT = """
import sys, time
from pathlib import Path
from psr import lineage
out = Path(sys.argv[1])
with lineage.staging(out) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half")
    (out.parent / "started").write_text("1")
    time.sleep(60)
    lineage.write_manifest(tmp, stage="x", inputs={"a": 1})
"""


def test_sigkill_inside_staging_publishes_nothing(tmp_path):
    out = tmp_path / "m1"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out)])
    deadline = time.time() + 30
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None, "child did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert not lineage.is_complete(out, {"a": 1})
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".m1.tmp-")]
    assert len(leftovers) == 1  # the killed run's workspace, hidden and unfinished
    _finished(out, inputs={"a": 1, "stage": "x"})  # a re-run cleans it up and publishes
    assert lineage.is_complete(out, {"a": 1, "stage": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1", "started"]
    json.loads((out / lineage.MANIFEST).read_text())
