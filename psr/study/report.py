"""metrics.json, the report tables (paper Table 1 / Table 3 layout) and the figures of a run.

`collect_metrics` reads only the stages' `summary.json` files and done-markers, so every number
in the report, the figures and the README comes from one file with the params that made it.
Several seeds are reported as mean ± sd (`sd` and `per_seed` beside each mean).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from psr.config import Params
from psr.io import atomic_write_text, read_json, write_json
from psr.study.graph import plan
from psr.study.layout import layout_for, run_root

STAGE_KEYS = {"02_step_search": "search", "03_judging": "judge", "04_step_dpo": "dpo"}
JUDGE_FIELDS = ("accuracy", "position_consistency", "parse_rate")


def _chain_metrics(params: Params, seed: int, arm: str) -> dict[str, dict]:
    layout = layout_for(params, seed)
    out: dict[str, dict] = {}
    for stage, k in plan(params):
        m = out.setdefault(f"M{k}", {"eval": {}, "wall_s": {}})
        marker = layout.marker_path(arm, k, stage)
        if marker.exists():
            m["wall_s"][stage] = read_json(marker)["wall_s"]
        summary_path = layout.stage_dir(arm, k, stage) / "summary.json"
        if not summary_path.exists():
            continue
        summary = read_json(summary_path)
        if stage == "05_evaluate":
            m["eval"] = {b: {"accuracy": s["accuracy"], "n": s["n"], "mean_steps": s["mean_steps"],
                             "mean_step_tokens": s["mean_step_tokens"]} for b, s in summary.items()}
        elif stage == "03_judging":
            m["judge"] = {f: summary[f] for f in JUDGE_FIELDS + ("n",) if f in summary}
        elif stage in ("02_step_search", "04_step_dpo"):
            m[STAGE_KEYS[stage]] = {k2: v for k2, v in summary.items() if k2 != "log_history"}
    return out


def _aggregate(per_seed: list[Any]) -> Any:
    """Mean over seeds for numbers (with sd and per_seed), recursing into dicts."""
    first = per_seed[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(s, dict) and k in s for s in per_seed)]
        return {k: _aggregate([s[k] for s in per_seed]) for k in keys}
    if isinstance(first, (int, float)) and not isinstance(first, bool) and len(per_seed) > 1:
        return round(statistics.fmean(per_seed), 3)
    return first


def _attach_sd(agg: Any, per_seed: list[Any]) -> None:
    """Beside each eval accuracy and judge accuracy, the sd and the per-seed values."""
    for model, m in agg.items():
        for bench, cell in m.get("eval", {}).items():
            vals = [s[model]["eval"][bench]["accuracy"] for s in per_seed if bench in s.get(model, {}).get("eval", {})]
            cell["sd"] = round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0
            cell["per_seed"] = vals
        if "judge" in m:
            vals = [s[model]["judge"]["accuracy"] for s in per_seed if "judge" in s.get(model, {})]
            m["judge"]["sd"] = round(statistics.stdev(vals), 3) if len(vals) > 1 else 0.0
            m["judge"]["per_seed"] = vals


def _data_provenance(params: Params) -> dict[str, dict]:
    """Per seed, who wrote the EFT judgments and segmented the IFT solutions (the data manifest's
    `provenance`, which only the real task writes)."""
    out = {}
    for seed in params.run.seeds:
        manifest = layout_for(params, seed).data_dir / "manifest.json"
        if manifest.exists():
            provenance = read_json(manifest).get("provenance")
            if provenance:
                out[str(seed)] = provenance
    return out


def collect_metrics(params: Params) -> dict:
    arms = {}
    for arm in params.run.arms:
        per_seed = [_chain_metrics(params, seed, arm) for seed in params.run.seeds]
        agg = _aggregate(per_seed)
        _attach_sd(agg, per_seed)
        arms[arm] = agg
    metrics = {"run": params.run.name, "seeds": list(params.run.seeds), "params": params.to_dict(), "arms": arms}
    data = _data_provenance(params)
    if data:
        metrics["data"] = data
    return metrics


def _fmt(cell: dict | None, key: str = "accuracy") -> str:
    if not cell or key not in cell:
        return "–"
    sd = cell.get("sd")
    return f"{cell[key]:.1f} ± {sd:.1f}" if sd else f"{cell[key]:.1f}"


def _num(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _data_lines(data: dict[str, dict]) -> list[str]:
    """The warm-up data's makers per seed, and a flag when any EFT judgment is the fixed template."""
    if not data:
        return []
    lines = ["## Warm-up data", "",
             "| Seed | EFT judgments | teacher | pairs judged | pairs kept | kept rate (%) | template share (%) "
             "| IFT segmenter | model splits | rule fallbacks |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    flagged = False
    for seed, d in data.items():
        e, i = d.get("eft", {}), d.get("ift", {})
        flagged |= bool(e.get("template_share"))
        cells = [seed, e.get("judgments"), e.get("teacher"), e.get("pairs_judged"), e.get("pairs_kept"),
                 e.get("kept_rate"), e.get("template_share"), i.get("segmenter"), i.get("segmented_by_model"),
                 i.get("rule_fallbacks")]
        lines.append("| " + " | ".join("–" if c is None else _num(c) for c in cells) + " |")
    if flagged:
        lines += ["", "**EFT judgments from the fixed template** (`task.eft_judgments: template`): the judge "
                  "learned one fixed sentence per verdict, not a written analysis as in the paper."]
    return lines + [""]


def report_markdown(metrics: dict) -> str:
    arms = metrics["arms"]
    models = sorted({m for a in arms.values() for m in a}, key=lambda s: int(s[1:]))
    benches = sorted({b for a in arms.values() for m in a.values() for b in m.get("eval", {})})
    seeds = metrics.get("seeds", [])
    lines = [f"# Run `{metrics['run']}`", "",
             f"Seeds: {seeds}" + (" (cells: mean ± sd over seeds)" if len(seeds) > 1 else ""), "",
             *_data_lines(metrics.get("data", {})),
             "## Accuracy (%) by iteration (paper Table 1 layout)", "",
             "| Model | " + " | ".join(benches) + (" | Avg. |" if len(benches) > 1 else " |"),
             "|---|" + "---|" * (len(benches) + (1 if len(benches) > 1 else 0))]
    for arm, data in arms.items():
        for m in models:
            cells = [data.get(m, {}).get("eval", {}).get(b) for b in benches]
            row = f"| {arm.upper()}-{m} | " + " | ".join(_fmt(c) for c in cells)
            if len(benches) > 1:
                vals = [c["accuracy"] for c in cells if c]
                row += f" | {statistics.fmean(vals):.1f}" if vals else " | –"
            lines.append(row + " |")
    lines += ["", "## Step-wise judge on held-out step pairs (paper Table 3 layout)", "",
              "| Model | " + " | ".join(f"{a.upper()} accuracy | position consistency | parse rate" for a in arms) + " |",
              "|---|" + "---|---|---|" * len(arms)]
    for m in models:
        row = f"| {m} |"
        for data in arms.values():
            j = data.get(m, {}).get("judge")
            row += f" {_fmt(j)} | {_fmt(j, 'position_consistency')} | {_fmt(j, 'parse_rate')} |"
        lines.append(row)
    lines += ["", "## Steps per solution / tokens per step (paper Tables 4, 7, 8)", "",
              "| Model | " + " | ".join(f"{b} steps | {b} tokens/step" for b in benches) + " |",
              "|---|" + "---|---|" * len(benches)]
    for arm, data in arms.items():
        for m in models:
            ev = data.get(m, {}).get("eval", {})
            row = f"| {arm.upper()}-{m} |"
            for b in benches:
                c = ev.get(b)
                row += f" {c['mean_steps']:.2f} | {c['mean_step_tokens']:.1f} |" if c else " – | – |"
            lines.append(row)
    lines += ["", "## Preference data per iteration", "",
              "| Arm | Model | pairs | questions | other |", "|---|---|---|---|---|"]
    for arm, data in arms.items():
        for m in models:
            s = data.get(m, {}).get("search")
            if not s:
                continue
            other = {k: v for k, v in s.items() if k in ("finished_rate", "unanimous", "ties", "rollbacks",
                                                          "parse_rate", "position_consistency", "score_parse_rate")}
            lines.append(f"| {arm} | {m} | {s.get('pairs', '–')} | {s.get('questions', '–')} | "
                         + ", ".join(f"{k} {_num(v)}" for k, v in other.items()) + " |")
    return "\n".join(lines) + "\n"


def figures(metrics: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = metrics["arms"]
    paths = []

    def plot(name: str, ylabel: str, series: dict[str, tuple[list[int], list[float], list[float]]]) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for label, (xs, ys, sds) in series.items():
            ax.errorbar(xs, ys, yerr=sds if any(sds) else None, marker="o", capsize=3, label=label)
        ax.set_xlabel("model M_k")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({x for xs, _, _ in series.values() for x in xs}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    def models(data: dict) -> list[tuple[int, dict]]:
        return sorted(((int(m[1:]), v) for m, v in data.items()), key=lambda t: t[0])

    acc, judge, steps = {}, {}, {}
    for arm, data in arms.items():
        benches = sorted({b for _, v in models(data) for b in v.get("eval", {})})
        for b in benches:
            pts = [(k, v["eval"][b]) for k, v in models(data) if b in v.get("eval", {})]
            acc[f"{arm} {b}"] = ([k for k, _ in pts], [c["accuracy"] for _, c in pts], [c.get("sd", 0) for _, c in pts])
            steps[f"{arm} {b}"] = ([k for k, _ in pts], [c["mean_steps"] for _, c in pts], [0] * len(pts))
        pts = [(k, v["judge"]) for k, v in models(data) if "judge" in v]
        judge[arm] = ([k for k, _ in pts], [c["accuracy"] for _, c in pts], [c.get("sd", 0) for _, c in pts])
    plot("accuracy_by_iteration.png", "greedy accuracy (%)", acc)
    plot("judge_by_iteration.png", "step-pair judge accuracy (%)", judge)
    plot("steps_by_iteration.png", "mean steps per solution", steps)
    return paths


def write_report(params: Params) -> dict:
    """Collect, then write metrics.json, report.md and the figures into the run folder."""
    root = run_root(params)
    metrics = collect_metrics(params)
    write_json(root / "metrics.json", metrics)
    atomic_write_text(root / "report.md", report_markdown(metrics))
    figures(metrics, root)
    return metrics
