"""Notebook execution: papermill into warm Jupyter kernels, each executed notebook written atomically."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import papermill as pm
from jupyter_client.manager import KernelManager


class StageFailed(RuntimeError):
    """A notebook cell raised; the message names the executed notebook that shows the error."""



# the kernel's start-up chatter (a TCP-transport warning) would bury the progress lines
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class WarmKernels:
    """One Jupyter kernel per worker thread, reused from stage to stage. Why: a fresh kernel
    that imports torch, transformers and TRL costs seconds of CPU per stage, and a study has
    dozens of stages. Between stages the kernel's namespace is
    cleared (`%reset -f`, then garbage collection), so a notebook sees only its own variables and
    the previous stage's models are freed; only imported modules stay. A kernel whose stage
    failed, or that died, is replaced by a fresh one."""

    RESET = "%reset -f\nimport gc\ngc.collect()"
    WARM = "import torch, transformers, trl\nimport psr.study.stages, psr.study.views"

    def __init__(self, cwd: Path | None = None):
        self.cwd = cwd or Path.cwd()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []

    def acquire(self):
        """This thread's kernel manager, ready for a new notebook."""
        km = getattr(self._local, "km", None)
        if km is not None and km.is_alive():
            self._run(km, self.RESET)
            return km
        km = KernelManager(kernel_name="python3")
        km.start_kernel(cwd=str(self.cwd), extra_arguments=KERNEL_ARGS)
        self._run(km, self.WARM)
        self._local.km = km
        with self._lock:
            self._all.append(km)
        return km

    def discard(self) -> None:
        """Shut this thread's kernel down (after a failed stage: its state is unknown)."""
        km = getattr(self._local, "km", None)
        self._local.km = None
        if km is not None:
            km.shutdown_kernel(now=True)

    def shutdown(self) -> None:
        with self._lock:
            kms, self._all = self._all, []
        for km in kms:
            if km.has_kernel:
                km.shutdown_kernel(now=True)

    @staticmethod
    def _run(km, code: str) -> None:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            reply = kc.execute_interactive(code, timeout=120, store_history=False, silent=True,
                                           output_hook=lambda msg: None)  # set-up chatter is not a stage's output
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"kernel set-up failed: {reply['content'].get('evalue', '')}")
        finally:
            kc.stop_channels()


def execute_notebook(src: Path, dst: Path, parameters: dict, log, tag: str, start: float,
             kernels: WarmKernels | None = None) -> None:
    """Run one notebook with papermill into `dst` (atomically), in a warm kernel when given."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.running.ipynb")
    t0 = time.perf_counter()
    log(f"{tag}: started, {time.perf_counter() - start:.0f}s into the run")
    try:
        extra = {"km": kernels.acquire()} if kernels is not None else {}
        pm.execute_notebook(
            str(src), str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False,
            cwd=str(Path.cwd()), language="python", extra_arguments=KERNEL_ARGS, **extra,
        )
    except Exception as e:
        if kernels is not None:
            kernels.discard()
        failed = dst.with_name(dst.stem + ".failed.ipynb")
        if tmp.exists():
            os.replace(tmp, failed)
        raise StageFailed(f"{tag} failed: {type(e).__name__}; see the executed notebook {failed}") from e
    os.replace(tmp, dst)
    log(f"{tag}: finished in {time.perf_counter() - t0:.1f}s")

