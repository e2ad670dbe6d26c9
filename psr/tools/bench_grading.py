"""Check ``psr.grading`` against every local benchmark's real gold answers.

``python -m psr.tools.bench_grading [--benchmark-dir DIR]`` (also ``python -m psr.tools.bench grading``).
For each benchmark found it grades, per row, the gold boxed in a dummy solution against that
same gold (self-accept: the grader must recover and accept every gold as written) and against
the next row's gold (cross-reject: the grader must not accept a different answer). It prints one
table row per benchmark and the failing rows with the reason, and exits 1 when a benchmark falls
below ``SELF_ACCEPT_MIN`` or ``CROSS_REJECT_MIN``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from psr.grading import DEFAULT_TIMEOUT_S, extract_answer, is_equiv
from psr.tasks.benchmarks import BenchmarkItem, available_benchmarks, load_benchmark

SELF_ACCEPT_MIN = 0.995
CROSS_REJECT_MIN = 0.99


@dataclass
class GradingReport:
    """Counts for one benchmark, and one line per failing row."""

    name: str
    rows: int
    empty_golds: int = 0
    self_accepted: int = 0
    cross_pairs: int = 0
    cross_rejected: int = 0
    graded: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def self_accept(self) -> float:
        """Share of rows with a gold whose boxed gold is accepted."""
        return self.self_accepted / max(1, self.rows - self.empty_golds)

    @property
    def cross_reject(self) -> float:
        """Share of pairs with different golds that are rejected."""
        return self.cross_rejected / max(1, self.cross_pairs)

    @property
    def passed(self) -> bool:
        return self.self_accept >= SELF_ACCEPT_MIN and self.cross_reject >= CROSS_REJECT_MIN


def boxed(gold: str) -> str:
    """A dummy solution whose last box holds ``gold`` as the benchmark writes it."""
    return "... \\boxed{" + gold + "}"


def cross_pairs(count: int, sample: int | None) -> list[tuple[int, int]]:
    """Row i paired with row i+1 (wrapping); an evenly spaced subset of ``sample`` rows if set."""
    rows = range(count)
    if sample is not None and sample < count:
        step = count / sample
        rows = sorted({int(k * step) for k in range(sample)})
    return [(i, (i + 1) % count) for i in rows] if count > 1 else []


def grade_benchmark(
    name: str,
    items: Sequence[BenchmarkItem],
    timeout: float = DEFAULT_TIMEOUT_S,
    cross_sample: int | None = None,
) -> GradingReport:
    """Self-accept on every row, cross-reject on ``cross_pairs(len(items), cross_sample)``."""
    report = GradingReport(name, len(items))
    start = time.perf_counter()
    for item in items:
        _grade_self(report, item, timeout)
    for i, j in cross_pairs(len(items), cross_sample):
        _grade_cross(report, items[i], items[j], timeout)
    report.seconds = time.perf_counter() - start
    return report


def _grade_self(report: GradingReport, item: BenchmarkItem, timeout: float) -> None:
    if not item.gold.strip():
        report.empty_golds += 1
        report.failures.append(f"self  {item.id}: empty gold in the source file (ungradable)")
        return
    extracted = extract_answer(boxed(item.gold))
    started = time.perf_counter()
    accepted = is_equiv(extracted, item.gold, timeout=timeout)
    report.graded += 1
    if accepted:
        report.self_accepted += 1
        return
    reason = _reason(extracted, item.gold, time.perf_counter() - started, timeout)
    report.failures.append(f"self  {item.id}: gold {item.gold!r} -> {reason}")


def _grade_cross(
    report: GradingReport, item: BenchmarkItem, other: BenchmarkItem, timeout: float
) -> None:
    if not item.gold.strip() or not other.gold.strip() or item.gold.strip() == other.gold.strip():
        return
    report.cross_pairs += 1
    report.graded += 1
    if not is_equiv(extract_answer(boxed(item.gold)), other.gold, timeout=timeout):
        report.cross_rejected += 1
        return
    report.failures.append(
        f"cross {item.id} vs {other.id}: {item.gold!r} accepted for gold {other.gold!r}"
    )


def _reason(extracted: str | None, gold: str, seconds: float, timeout: float) -> str:
    if extracted is None:
        return "no boxed answer extracted"
    if extracted != gold.strip():
        return f"extracted {extracted!r}, which is rejected"
    if seconds >= timeout:
        return f"timed out after {seconds:.1f} s"
    return "rejected although extracted unchanged"


def format_table(reports: Sequence[GradingReport]) -> str:
    """Fixed-width table: rows, empty golds, self-accept %, cross-reject %, answers per second."""
    header = (
        f"{'benchmark':<14} {'rows':>5} {'empty':>5} {'self-accept':>11} "
        f"{'cross-reject':>12} {'pairs':>5} {'ans/s':>8}  ok"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        rate = r.graded / r.seconds if r.seconds > 0 else float("inf")
        lines.append(
            f"{r.name:<14} {r.rows:>5} {r.empty_golds:>5} {100 * r.self_accept:>10.2f}% "
            f"{100 * r.cross_reject:>11.2f}% {r.cross_pairs:>5} {rate:>8.1f}  "
            f"{'yes' if r.passed else 'NO'}"
        )
    return "\n".join(lines)


def default_benchmark_dir() -> Path:
    """``$PSR_BENCHMARK_DIR`` (the Qwen2.5-Math evaluation layout; `--benchmark-dir` overrides it)."""
    return Path(os.environ.get("PSR_BENCHMARK_DIR", "benchmarks"))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m psr.tools.bench grading",
        description="Check psr.grading on the gold answers of local benchmark files.",
    )
    parser.add_argument("--benchmark-dir", type=Path, default=default_benchmark_dir())
    parser.add_argument("--benchmarks", nargs="+", help="names to check (default: all found)")
    parser.add_argument("--cross-sample", type=int, help="grade only N evenly spaced cross pairs")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per answer")
    parser.add_argument("--max-failures", type=int, default=30, help="rows listed per benchmark")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Grade every benchmark found, print the table and failures; 1 if a threshold is missed."""
    args = _parse_args(argv)
    names = args.benchmarks or available_benchmarks(args.benchmark_dir)
    if not names:
        print(f"no benchmark files under {args.benchmark_dir}")
        return 1
    reports = []
    for name in names:
        items = load_benchmark(name, args.benchmark_dir)
        reports.append(grade_benchmark(name, items, args.timeout, args.cross_sample))
    print(format_table(reports))
    for report in reports:
        if report.failures:
            print(f"\n{report.name}: {len(report.failures)} failing row(s)")
            for line in report.failures[: args.max_failures]:
                print(f"  {line}")
    return 0 if all(report.passed for report in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
