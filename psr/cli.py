"""`psr` command line: `psr run PARAMS [-p key=value ...]`, `psr gpu-check`, `psr bench NAME`, `psr smol`."""

from __future__ import annotations

import argparse
import sys

from psr.config import ConfigError, load
from psr.models import SMOL_NAME
from psr.study.kernels import StageFailed
from psr.study.runner import run
from psr.tools import bench, gpu_check, smol


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpu-check"]:  # argparse's REMAINDER drops leading options (`--arch tiny`)
        return gpu_check.main(argv[1:])
    parser = argparse.ArgumentParser(prog="psr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the whole study (papermill executes the notebooks in order)")
    run_p.add_argument("params", help="preset YAML, e.g. params/tiny.yaml")
    run_p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. -p search.width=4 (repeatable)")
    gpu_p = sub.add_parser("gpu-check", help="QLoRA memory/throughput check with the 7B architecture")
    gpu_p.add_argument("rest", nargs=argparse.REMAINDER)
    bench_p = sub.add_parser("bench", help="benchmarks: search, train, grading")
    bench_p.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("smol", help="convert SmolLM2-135M-Instruct (model name `smol`) once into a local folder")
    args = parser.parse_args(argv)

    if args.command == "run":
        try:
            if load(args.params, args.param).model.name_or_path == SMOL_NAME:
                print(f"psr: model 'smol': {smol.ensure_smol()}", flush=True)
            run(args.params, args.param, log=lambda msg: print(msg, flush=True))
        except ConfigError as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
        except StageFailed as e:
            print(f"psr: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "smol":
        print(smol.ensure_smol())
        return 0
    if args.command == "gpu-check":
        return gpu_check.main(args.rest)
    return bench.main(args.rest)


if __name__ == "__main__":
    sys.exit(main())
