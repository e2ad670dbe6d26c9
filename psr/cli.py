"""`psr` command line: `psr run PARAMS [-p key=value ...]`, `psr gpu-check`, `psr bench NAME`."""

from __future__ import annotations

import argparse
import sys

from psr.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpu-check"]:  # argparse's REMAINDER drops leading options (`--arch tiny`)
        from psr.gpu_check import main as gpu_main

        return gpu_main(argv[1:])
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
    args = parser.parse_args(argv)

    if args.command == "run":
        from psr.pipeline import StageFailed, run

        try:
            run(args.params, args.param, log=lambda msg: print(msg, flush=True))
        except ConfigError as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
        except StageFailed as e:
            print(f"psr: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "gpu-check":
        from psr.gpu_check import main as gpu_main

        return gpu_main(args.rest)
    from psr.bench import main as bench_main

    return bench_main(args.rest)


if __name__ == "__main__":
    sys.exit(main())
