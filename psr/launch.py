"""Training under `accelerate launch` (multi-GPU, DeepSpeed ZeRO-3) for presets that set
`run.accelerate_config`; without it `psr.train` trains in the caller's own process.

Parent side (`LaunchConfig.run`, called by `psr.train.warmup_sft`/`step_dpo` inside the staging
folder they made): the job — params, examples, model paths, seed, the manifest inputs — goes to
JSON files in `<staging>/.launch/`, then

    python -m accelerate.commands.accelerate_cli launch --config_file <file> -m psr.launch <job.json>

runs in a subprocess (its own session, stopped with the parent on an error or interrupt). Its
output streams to this process's stdout and to `<out_dir>.launch.log` beside the model folder;
a non-zero exit raises `LaunchFailed` with the last lines and the log's path. The caller then
publishes the staging folder once, after every process has exited.

Worker side (`main`, `python -m psr.launch job.json`): each process checks that accelerate sees
the world size the job was planned for and runs `psr.train.run_sft`/`run_dpo`, which make the
effective batch per_device x accumulation x processes, let every process save (ZeRO-3 gathers
there), and leave the LoRA merge and the manifest to rank 0 after `wait_for_everyone`.

accelerate's launcher starts a `MULTI_CPU` config's processes only through mpirun (a hostfile);
on one machine without one it starts a single process, which would silently train alone. Such a
config is therefore started with accelerate's torchrun launcher (`--multi_gpu`, i.e.
torch.distributed.run) and ACCELERATE_USE_CPU=true, which makes each process a gloo CPU rank.

Tested here (CPU, tests/test_launch.py): 2 CPU processes (MULTI_CPU) for warm-up SFT (full
weights) and step-DPO (LoRA, merged by rank 0), effective batch and manifest, failures. Not
tested: DeepSpeed (not installed on the CPU machine; nothing here imports it unless the config's
distributed_type is DEEPSPEED, and then only accelerate and transformers do), GPUs, several
machines, QLoRA across processes.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from psr.config import Params, accelerate_config_path

JOB_DIR = ".launch"  # inside the staging folder; removed before it is published
_REPO = Path(__file__).resolve().parent.parent
# accelerate starts these with torch.distributed.run, which takes `--main_process_port 0` (a free port)
_TORCHRUN_TYPES = {"MULTI_GPU", "DEEPSPEED", "FSDP"}


class LaunchError(ValueError):
    """An accelerate config or job that cannot be launched; raised before any process starts."""


class LaunchFailed(RuntimeError):
    """`accelerate launch` exited with an error; the message names the log that shows it."""


@dataclass(frozen=True)
class LaunchConfig:
    """The parts of an accelerate config file the launcher needs."""

    path: Path
    distributed_type: str  # accelerate's DistributedType value: "MULTI_GPU", "DEEPSPEED", "MULTI_CPU", "NO", ...
    num_processes: int  # over all machines: the world size
    num_machines: int = 1
    use_cpu: bool = False
    mpirun_hostfile: str = ""
    main_process_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.num_processes

    @property
    def local_multi_cpu(self) -> bool:
        """A MULTI_CPU config accelerate itself would start as one process (see module docstring)."""
        return (
            self.distributed_type == "MULTI_CPU" and self.num_processes > 1 and self.num_machines == 1
            and not self.mpirun_hostfile
        )

    @classmethod
    def read(cls, path: str | Path) -> "LaunchConfig":
        from accelerate.commands.config.config_args import load_config_from_file

        path = Path(path)
        if not path.is_file():
            raise LaunchError(f"accelerate config {path}: file not found")
        try:
            cfg = load_config_from_file(str(path))
        except Exception as e:  # accelerate raises TypeError/ValueError/YAML errors for a bad file
            raise LaunchError(f"accelerate config {path}: not a valid accelerate config ({type(e).__name__}: {e})") from e
        dist = getattr(cfg.distributed_type, "value", str(cfg.distributed_type))
        num = cfg.num_processes
        if not isinstance(num, int) or num < 1:
            raise LaunchError(f"accelerate config {path}: num_processes must be a positive integer, got {num!r}")
        return cls(
            path=path,
            distributed_type=str(dist),
            num_processes=num,
            num_machines=int(cfg.num_machines or 1),
            use_cpu=bool(cfg.use_cpu),
            mpirun_hostfile=str((cfg.mpirun_config or {}).get("mpirun_hostfile") or ""),
            main_process_port=cfg.main_process_port,
        )

    @classmethod
    def for_params(cls, params: Params) -> "LaunchConfig":
        path = accelerate_config_path(params)
        if path is None:
            raise LaunchError("run.accelerate_config is empty: training runs in this process")
        if not path.is_file():
            raise LaunchError(
                f"run.accelerate_config {params.run.accelerate_config!r}: no such file {path} "
                f"(relative to the preset file {params.source or '(none: the working directory)'})"
            )
        return cls.read(path.resolve())

    def check(self, params: Params, stage: str, callbacks: Sequence | None = None) -> int:
        """Everything that can fail before a process starts; returns the gradient accumulation."""
        from psr.train import gradient_accumulation

        if callbacks:
            raise LaunchError(f"{stage}: callbacks cannot be passed to launched processes (run.accelerate_config is set)")
        if self.distributed_type == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
            raise LaunchError(
                f"accelerate config {self.path} uses DeepSpeed, which is not installed "
                "(pip install deepspeed: the `gpu` extra of pyproject.toml)"
            )
        section, name = (params.warmup, "warmup") if stage == "warmup_sft" else (params.dpo, "dpo")
        try:
            return gradient_accumulation(section, self.world_size, name)
        except ValueError as e:
            raise LaunchError(f"{e} (accelerate config {self.path}: num_processes={self.num_processes})") from None

    def command(self, job_path: Path) -> tuple[list[str], dict[str, str]]:
        """The `accelerate launch` command line and its environment."""
        cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(self.path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are written
        if self.local_multi_cpu:
            cmd.append("--multi_gpu")
        if self.local_multi_cpu or self.use_cpu:
            env["ACCELERATE_USE_CPU"] = "true"
        torchrun = self.local_multi_cpu or self.distributed_type in _TORCHRUN_TYPES
        if torchrun and self.num_machines == 1 and self.main_process_port is None:
            cmd += ["--main_process_port", "0"]  # a free port: two runs on one machine do not collide
        cmd += ["-m", "psr.launch", str(job_path)]
        return cmd, env

    def run(
        self,
        stage: str,
        params: Params,
        examples: Sequence[dict[str, str]],
        work: str | Path,
        out_dir: str | Path,
        *,
        inputs: dict[str, Any],
        seed: int,
        base: str | Path | None = None,
        tokenizer=None,
        model_dir: str | Path | None = None,
        ref_dir: str | Path | None = None,
    ) -> None:
        """Train `stage` into `work` (the staging folder of `out_dir`) under `accelerate launch`;
        returns when every process has exited and rank 0 has written the manifest."""
        from psr.io import write_json, write_jsonl

        if stage not in ("warmup_sft", "step_dpo"):
            raise LaunchError(f"unknown training stage {stage!r}")
        accumulation = self.check(params, stage)
        work = Path(work)
        job_dir = work / JOB_DIR
        job_dir.mkdir(parents=True, exist_ok=False)
        write_jsonl(job_dir / "examples.jsonl", list(examples))
        tok_dir = None
        if tokenizer is not None:
            tok_dir = job_dir / "tokenizer"
            tokenizer.save_pretrained(str(tok_dir))
        job = {
            "stage": stage,
            "params": params.to_dict(),
            "examples": str(job_dir / "examples.jsonl"),
            "work": str(work),
            "inputs": inputs,
            "seed": seed,
            "base": None if base is None else str(base),
            "tokenizer": None if tok_dir is None else str(tok_dir),
            "model_dir": None if model_dir is None else str(model_dir),
            "ref_dir": None if ref_dir is None else str(ref_dir),
            "world_size": self.world_size,
            "gradient_accumulation_steps": accumulation,
        }
        job_path = job_dir / "job.json"
        write_json(job_path, job)
        log_path = log_path_for(out_dir)
        cmd, env = self.command(job_path)
        rc = _stream(cmd, env, log_path, header=f"{stage}: {' '.join(cmd)}\n")
        where = f"{stage} under `accelerate launch` ({self.path}, {self.world_size} processes)"
        if rc != 0:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            raise LaunchFailed(
                f"{where} exited with code {rc}: {_first_error(text) or 'no Python error in the output'}\n"
                f"last lines:\n{_tail(text)}\nfull log: {log_path}"
            )
        if not (work / "manifest.json").is_file():
            raise LaunchFailed(f"{where} exited cleanly but rank 0 wrote no manifest; full log: {log_path}")
        shutil.rmtree(job_dir)


def log_path_for(out_dir: str | Path) -> Path:
    """Where a launched training writes its output: beside the model folder, kept after failures."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}.launch.log")


def _stream(cmd: list[str], env: dict[str, str], log_path: Path, header: str) -> int:
    """Run `cmd`, copying its output (stdout and stderr) as it comes to our stdout and the log;
    progress bars keep their carriage returns. Stops the whole process group on any exception."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(header)
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 1 << 16):
                text = decoder.decode(chunk)
                log.write(text)
                log.flush()
                sys.stdout.write(text)
                sys.stdout.flush()
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the launch's process group (accelerate, torchrun and every rank), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:\w+\.)*\w*(?:Error|Exception)): ")
_LAUNCHER_ERRORS = {"ChildFailedError", "CalledProcessError"}  # torchrun/accelerate reporting a rank's exit


def _first_error(text: str) -> str:
    """The first exception line a process printed (the root cause; the launchers' own come later)."""
    for line in text.replace("\r", "\n").split("\n"):
        m = _ERROR_LINE.match(line)
        if m and m.group(1).rsplit(".", 1)[-1] not in _LAUNCHER_ERRORS:
            return line.strip()
    return ""


def _tail(text: str, n: int = 15) -> str:
    lines = [line for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return "\n".join(lines[-n:])


# ----------------------------------------------------------------------------- worker


def params_from_dict(raw: dict[str, Any]) -> Params:
    """`Params.to_dict()` back to validated Params (the same digest, so the same manifest inputs)."""
    raw = dict(raw)
    source = raw.pop("source", "")
    return Params().replace(raw).model_copy(update={"source": source})


def main(argv: Sequence[str] | None = None) -> int:
    """One launched process: `python -m psr.launch <job.json>` (started by `accelerate launch`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: accelerate launch --config_file <file> -m psr.launch <job.json>", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes != job["world_size"]:
        raise RuntimeError(
            f"accelerate started {state.num_processes} processes ({state.distributed_type}), the job was planned "
            f"for {job['world_size']} (num_processes of the accelerate config); gradient accumulation depends on it"
        )
    from psr import train
    from psr.io import read_jsonl

    params = params_from_dict(job["params"])
    examples = read_jsonl(job["examples"])
    t0 = time.perf_counter()
    common = dict(inputs=job["inputs"], seed=job["seed"], world_size=state.num_processes)
    if job["stage"] == "warmup_sft":
        tokenizer = None
        if job["tokenizer"]:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
        train.run_sft(params, examples, job["work"], base=job["base"], tokenizer=tokenizer, **common)
    elif job["stage"] == "step_dpo":
        train.run_dpo(params, job["model_dir"], examples, job["work"], ref_dir=job["ref_dir"], **common)
    else:
        raise ValueError(f"unknown stage {job['stage']!r} in {argv[0]}")
    print(f"[rank {state.process_index}/{state.num_processes}] {job['stage']} done in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
