"""Which code made a run: the git commit of the project and whether its working tree differed from
it, recorded in the run's `params.json` when `psr run` starts and carried into `metrics.json`, so
that a committed result (and the README block generated from it) says what code it came from.

Run outputs under `results/` do not make the tree dirty: a rerun of a committed run rewrites
them. A run resumed with other code keeps the earlier records under `earlier`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(repo: Path = PROJECT_ROOT) -> dict:
    """{commit, committed (its date), dirty}; all None outside a git checkout."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "committed": None, "dirty": None}
    status = _git(repo, "status", "--porcelain", "--", ".", ":(exclude)results")
    return {"commit": commit, "committed": _git(repo, "log", "-1", "--format=%cI", commit),
            "dirty": None if status is None else bool(status)}


def with_earlier(current: dict, previous: dict | None) -> dict:
    """`current`, keeping the records of earlier invocations of the same run that differ from it."""
    if not previous:
        return current
    earlier = list(previous.get("earlier", []))
    last = {k: v for k, v in previous.items() if k != "earlier"}
    if last != current and last not in earlier:
        earlier.append(last)
    return dict(current, earlier=earlier) if earlier else current
