"""`psr` command line: `psr run PARAMS [-p key=value ...]`, `psr report RUN_DIR [--readme README.md]`,
`psr build-eft PARAMS`, `psr ship-m1 RUN_DIR --to DIR`, `psr estimate PARAMS`, `psr gpu-check`, `psr bench NAME`, `psr smol`."""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from psr.config import ConfigError, load


def command(name: str) -> ModuleType:
    """The module behind a subcommand, imported when that subcommand runs: the tools import TRL,
    the runner papermill, so importing them all up front would make `psr --help` or a config error
    take ~10 s. The CLI sits above every part of the package, so this cannot hide a cycle."""
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpu-check"]:  # argparse's REMAINDER drops leading options (`--arch tiny`)
        generate = "--mode=generate" in argv or any(a == "--mode" and b == "generate" for a, b in zip(argv, argv[1:]))
        return command("psr.tools.gpu_generate" if generate else "psr.tools.gpu_check").main(argv[1:])
    if argv[:1] == ["ship-m1"]:
        return command("psr.tools.ship_m1").main(argv[1:])
    if argv[:1] == ["estimate"]:
        return command("psr.tools.estimate").main(argv[1:])
    if argv[:1] == ["build-eft"]:  # its own options and help (psr.tools.build_eft)
        try:
            return command("psr.tools.build_eft").main(argv[1:])
        except ConfigError as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="psr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the whole study (papermill executes the notebooks in order)")
    run_p.add_argument("params", help="preset YAML, e.g. params/tiny.yaml")
    run_p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. -p search.width=4 (repeatable)")
    report_p = sub.add_parser("report", help="a run's report.md and figures from its metrics.json; with --readme, "
                                             "the README's results block (between its psr:results markers)")
    report_p.add_argument("run_dir", help="the run folder, e.g. results/tiny")
    report_p.add_argument("--readme", metavar="README.md", help="rewrite this file's results block")
    report_p.add_argument("--collect", action="store_true",
                          help="first collect metrics.json again from the run's stage files (where the run was made)")
    est_p = sub.add_parser("estimate", help="a preset's generation tokens and hours per phase and backend")
    est_p.add_argument("rest", nargs=argparse.REMAINDER)
    gpu_p = sub.add_parser("gpu-check", help="QLoRA memory/throughput check with the 7B architecture; "
                                             "--mode generate: tokens/s of each generation backend")
    gpu_p.add_argument("rest", nargs=argparse.REMAINDER)
    bench_p = sub.add_parser("bench", help="benchmarks: search, train, grading")
    bench_p.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("smol", help="convert SmolLM2-135M-Instruct (model name `smol`) once into a local folder")
    sub.add_parser("ship-m1", help="copy a run's warm-up models into a preset's warmup.shipped folder")
    sub.add_parser("build-eft", help="step-pair EFT judged by the preset's teacher model (psr build-eft -h)")
    args = parser.parse_args(argv)

    if args.command == "run":
        try:
            params = load(args.params, args.param)  # a bad preset fails here, before anything is imported
        except ConfigError as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
        smol, runner, kernels = (command(f"psr.{m}") for m in ("tools.smol", "study.runner", "study.kernels"))
        try:
            if params.model.name_or_path == smol.NAME:
                print(f"psr: model 'smol': {smol.ensure_smol()}", flush=True)
            runner.run(args.params, args.param, log=lambda msg: print(msg, flush=True))
        except ConfigError as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
        except kernels.StageFailed as e:
            print(f"psr: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "report":
        try:
            command("psr.study.report").report_run(args.run_dir, args.readme, collect=args.collect)
        except (OSError, ValueError) as e:
            print(f"psr: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "smol":
        print(command("psr.tools.smol").ensure_smol())
        return 0
    if args.command == "gpu-check":
        return command("psr.tools.gpu_check").main(args.rest)
    return command("psr.tools.bench").main(args.rest)


if __name__ == "__main__":
    sys.exit(main())
