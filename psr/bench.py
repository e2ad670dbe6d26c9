"""`python -m psr.bench {search,train,grading} [options]`: measurements, not tests."""

from __future__ import annotations

import importlib
import sys

BENCHES = {"search": "psr.bench_search", "train": "psr.bench_train", "grading": "psr.bench_grading"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m psr.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
