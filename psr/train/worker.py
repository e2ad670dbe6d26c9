"""One process of a launched training: `accelerate launch ... -m psr.train.worker <job.json>`
(the command `psr.train.launch` builds). It checks that accelerate started the world size the
job was planned for, then runs `run_sft`/`run_dpo`, which let every process save and leave the
LoRA merge and the manifest to rank 0.

A module of its own, not part of `psr.train.launch`: `python -m` on a module that the package
already imported runs a second copy of it (and runpy warns about that).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from transformers import AutoTokenizer

from psr.config import Params
from psr.io import read_jsonl
from psr.train.run import run_dpo, run_sft


def params_from_dict(raw: dict[str, Any]) -> Params:
    """`Params.to_dict()` back to validated Params (the same digest, so the same manifest inputs)."""
    raw = dict(raw)
    source = raw.pop("source", "")
    return Params().replace(raw).model_copy(update={"source": source})


def main(argv: Sequence[str] | None = None) -> int:
    """One launched process: `python -m psr.train.worker <job.json>` (started by `accelerate launch`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: accelerate launch --config_file <file> -m psr.train.worker <job.json>", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes != job["world_size"]:
        raise RuntimeError(
            f"accelerate started {state.num_processes} processes ({state.distributed_type}), the job was planned "
            f"for {job['world_size']} (num_processes of the accelerate config); gradient accumulation depends on it"
        )
    params = params_from_dict(job["params"])
    examples = read_jsonl(job["examples"])
    t0 = time.perf_counter()
    common = dict(inputs=job["inputs"], seed=job["seed"], world_size=state.num_processes)
    if job["stage"] == "warmup_sft":
        tokenizer = None
        if job["tokenizer"]:
            tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
        run_sft(params, examples, job["work"], base=job["base"], tokenizer=tokenizer, **common)
    elif job["stage"] == "step_dpo":
        run_dpo(params, job["model_dir"], examples, job["work"], ref_dir=job["ref_dir"], **common)
    else:
        raise ValueError(f"unknown stage {job['stage']!r} in {argv[0]}")
    print(f"[rank {state.process_index}/{state.num_processes}] {job['stage']} done in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
