"""`python -m psr.tools.bench {search,train,grading} [options]`: measurements, not tests."""

from __future__ import annotations

import sys

from psr.tools import bench_grading, bench_search, bench_train

BENCHES = {"search": bench_search, "train": bench_train, "grading": bench_grading}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m psr.tools.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    return BENCHES[argv[0]].main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
