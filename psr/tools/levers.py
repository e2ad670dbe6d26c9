"""`python -m psr.tools.levers results/levers`: the tables of what was tried to make the embedded
study see an effect, written from the measurements beside them, so that no number is copied by hand.

Two kinds of measurement live in that folder:
- `probes.jsonl`: one line per `psr.tools.warmup_probe` run (M1 under some overrides: greedy
  accuracy by number of operations, the step judge on held-out pairs, the pairs one search
  iteration makes, checked with the answer key);
- `runs/<name>/metrics.json` (+ `params.json`, `report.md`): whole studies of one lever, copied
  from their run folder (`--add RUN_DIR`), and the reference run named with `--reference`.
The README's blocks between `<!-- levers:probes -->`/`<!-- levers:runs -->` markers and their
`end` markers are rewritten; everything else in it is prose.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from psr.io import read_json, read_jsonl

PAIR_KINDS = ("right_over_wrong", "inverted", "both_wrong", "both_right")


def _num(x) -> str:
    if isinstance(x, float):
        return f"{x:.1f}"
    return "–" if x is None else str(x)


def probe_table(rows: list[dict]) -> str:
    lines = ["| probe | seed | overrides | M1 acc | acc by ops (2/3/4/5) | judge acc | position consistency | "
             "judge on own pairs | pairs (right>wrong / wrong>right / both wrong of n) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by_ops = " / ".join(_num(r.get("acc_by_ops", {}).get(k)) for k in ("2", "3", "4", "5"))
        pairs = r.get("pairs")
        pair_cell = "not measured" if pairs is None else (
            f"{pairs.get('right_over_wrong', pairs.get('right>wrong', 0))} / {pairs.get('inverted', 0)} / "
            f"{pairs.get('both_wrong', 0)} of {r.get('n_pairs', 0)}")
        over = " ".join(o for o in r.get("over", []) if not o.startswith("warmup.shipped=")) or "(preset)"
        lines.append(f"| {r['name']} | {r['seed']} | `{over}` | {_num(r.get('acc'))} | {by_ops} | {_num(r.get('judge'))} | "
                     f"{_num(r.get('consistency'))} | {_num(r.get('own_pairs_judge'))} | {pair_cell} |")
    return "\n".join(lines)


def _mean(cell) -> float | None:
    return cell.get("mean") if isinstance(cell, dict) else cell


def _overrides(run: Path) -> str:
    params = run / "params.json"
    over = read_json(params).get("overrides", []) if params.is_file() else []
    shown = [o for o in over if not o.startswith(("run.name=", "run.results_dir=", "run.workers=", "test_time."))]
    return " ".join(shown) or "(preset)"


def run_rows(runs_dir: Path) -> list[tuple[str, Path]]:
    return sorted((p.name, p) for p in runs_dir.iterdir() if (p / "metrics.json").is_file()) if runs_dir.is_dir() else []


def run_table(runs: list[tuple[str, Path]]) -> str:
    """Per run and arm: M1 and last accuracy, the gain per seed, pairs and their quality at M1,
    and the self-judge on its own pairs at M1 (means over seeds)."""
    lines = ["| run | overrides | seeds | arm | M1 acc | last acc | last − M1 per seed | pairs at M1 (right>wrong %) | "
             "judge on own pairs at M1 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs:
        m = read_json(run / "metrics.json")
        seeds = m.get("seeds") or m.get("run", {}).get("seeds")
        for arm, models in m["arms"].items():
            gain = m.get("gains", {}).get(arm, {})
            for bench, g in gain.items():
                last = g["to"]
                acc = lambda k: _mean(models.get(k, {}).get("eval", {}).get(bench, {}).get("accuracy"))  # noqa: E731
                per_seed = g.get("per_seed", [g.get("mean")])
                pairs = models.get("M1", {}).get("pairs", {})
                own = pairs.get("own_verdicts", {}).get("accuracy")
                lines.append(
                    f"| {name} | `{_overrides(run)}` | {_num(seeds)} | {arm} | {_num(acc('M1'))} | {_num(acc(last))} | "
                    f"{', '.join(f'{x:+.1f}' for x in per_seed)} | {_num(_mean(pairs.get('n')))} "
                    f"({_num(_mean(pairs.get('right_over_wrong')))}) | {_num(_mean(own))} |")
    return "\n".join(lines)


def add_run(run_dir: Path, levers_dir: Path, name: str | None = None) -> Path:
    """Copy a lever's run summary (metrics.json, params.json, report.md) under `runs/`."""
    out = levers_dir / "runs" / (name or run_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.json", "params.json", "report.md"):
        if (run_dir / f).is_file():
            shutil.copy2(run_dir / f, out / f)
    return out


def replace_block(text: str, tag: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- levers:{tag} -->\n)(?:.*?\n)?(<!-- levers:{tag} end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- levers:{tag} --> ... <!-- levers:{tag} end --> block")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def write_tables(levers_dir: Path) -> None:
    readme = levers_dir / "README.md"
    text = readme.read_text()
    text = replace_block(text, "probes", probe_table(read_jsonl(levers_dir / "probes.jsonl")))
    text = replace_block(text, "runs", run_table(run_rows(levers_dir / "runs")))
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m psr.tools.levers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("levers_dir", type=Path)
    parser.add_argument("--add", type=Path, metavar="RUN_DIR", help="copy this run's summary under runs/ first")
    parser.add_argument("--name", help="its name under runs/ (default: the run folder's)")
    args = parser.parse_args(argv)
    if args.add:
        add_run(args.add, args.levers_dir, args.name)
    write_tables(args.levers_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
