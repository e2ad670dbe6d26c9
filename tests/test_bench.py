"""`python -m psr.tools.bench search` runs both loops and ends with the speedup line (a smoke test of
the benchmark's plumbing on a random-weight model; the number itself is measured, not asserted)."""

from __future__ import annotations

import re

from psr.tools.bench_search import main


def test_search_bench_ends_with_the_speedup_line(capsys):
    assert main(["--questions", "2", "--expansions", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\dx", lines[-1]), lines[-1]
    assert any("torch threads 1" in line for line in lines)
    engine = next(line for line in lines if line.startswith("engine:"))
    assert any(line.startswith("engine again:") for line in lines)  # timed before and after the naive loop
    naive = next(line for line in lines if line.startswith("naive:"))
    # a random model never parses a verdict: every expansion is judged in full, by both loops
    assert int(engine.split()[1]) == int(naive.split()[1]) > 0
