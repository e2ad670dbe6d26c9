"""metrics.json, the report tables (paper Table 1 / Table 3 / Table 5 layout), the figures of a run,
and the README's results block.

`collect_metrics` reads only the stages' `summary.json` files, the pair diagnostics beside the
preference stages' summaries (`psr.study.diagnose`), the done-markers (wall times) and the code
record of `params.json`, so every number in the report, the figures and the README comes from
one file with the params and the code that made it.

With several seeds, each *measurement* (an accuracy, a judge or pair-diagnostic number, what a
search or a DPO run measured, a wall time: `MEASUREMENTS`) becomes `{mean, sd, per_seed}`; every
other value is a setting or an identifier, kept once when all seeds agree and as `{per_seed}`
when they differ (a seed, a model path). One seed keeps the stages' values as they are.
`gains` holds each arm's last-minus-first accuracy per seed (the verified arm's M1 is psrlm's),
from M1: M0, the model before warm-up, is shown beside the loop's models (one model for every arm,
judged and evaluated in the base arm's chain) but is not where the loop starts.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psr.config import Params, load
from psr.io import atomic_write_text, read_json, write_json
from psr.study.arms import base_arm, model_arm, shares_model
from psr.study.diagnose import diagnose_run
from psr.study.graph import plan
from psr.study.layout import DIAGNOSTICS, PREFERENCE_STAGE, SUMMARY, TEST_TIME_STAGE, layout_for, run_root

STAGE_KEYS = {"02_step_search": "search", "03_judging": "judge", "04_step_dpo": "dpo"}
JUDGE_FIELDS = ("accuracy", "position_consistency", "parse_rate")
SEARCH_MEASUREMENTS = (
    "finished", "finished_rate", "pairs", "pairs_per_question", "expansions", "ties", "unanimous", "rollbacks",
    "judge_calls", "judge_generations", "parse_rate", "position_consistency", "candidate_tokens", "judge_tokens",
    "wall_time_s", "score_parse_rate", "mean_score", "wall_s",
)
TEST_TIME_MEASUREMENTS = {
    "greedy": ("accuracy", "mean_tokens", "mean_steps", "mean_step_tokens", "truncated"),
    "search": ("accuracy", "mean_tokens", "mean_candidate_tokens", "mean_judge_tokens", "mean_expansions",
               "mean_steps", "finished_rate"),
}
# paths below an M_k cell whose numbers are measurements ("*": any key, "**": anything below)
MEASUREMENTS: tuple[tuple[str, ...], ...] = (
    ("eval", "*", "accuracy"), ("eval", "*", "mean_steps"), ("eval", "*", "mean_step_tokens"),
    *(("judge", f) for f in JUDGE_FIELDS),
    *(("search", f) for f in SEARCH_MEASUREMENTS),
    ("dpo", "pairs"), ("dpo", "wall_s"), ("dpo", "train", "metrics", "*"), ("dpo", "train", "wall_time_s"),
    ("dpo", "train", "memory", "*"),
    ("pairs", "**"),
    ("wall_s", "*"),
    *(("test_time", "*", half, f) for half, fields in TEST_TIME_MEASUREMENTS.items() for f in fields),
)
PAIR_COLUMNS = (("right_over_wrong", "right > wrong"), ("both_right", "both right"), ("both_wrong", "both wrong"),
                ("inverted", "wrong > right"))
README_BEGIN, README_END = "<!-- psr:results begin -->", "<!-- psr:results end -->"


# ----------------------------------------------------------------------------- collecting


def _model_cells(params: Params, arm: str) -> list[tuple[str, int, str]]:
    """(stage, k, the arm whose folder holds it) for every summary of `arm`'s chain: its own
    stages, and the judging and evaluation of a model it shares with another arm (M0, which the
    base arm judges and evaluates for all; the verified arm's M1)."""
    own = [(stage, k, arm) for stage, k in plan(params, arm)]
    shared = [(stage, k, model_arm(arm, k)) for stage, k in plan(params, model_arm(arm, 1))
              if stage in ("03_judging", "05_evaluate") and shares_model(arm, k)]
    base = base_arm(params.run.arms)
    m0 = [(stage, 0, base) for stage, k in plan(params, base) if k == 0] if arm != base else []
    return sorted(own + shared + m0, key=lambda t: t[1])


def _chain_metrics(params: Params, seed: int, arm: str) -> dict[str, dict]:
    layout = layout_for(params, seed)
    out: dict[str, dict] = {}
    for stage, k, home in _model_cells(params, arm):
        m = out.setdefault(f"M{k}", {"eval": {}, "wall_s": {}})
        if home != arm:
            m["same_model_as"] = home
        marker = layout.marker_path(home, k, stage)
        if marker.exists() and home == arm:
            m["wall_s"][stage] = read_json(marker)["wall_s"]
        summary_path = layout.stage_dir(home, k, stage) / SUMMARY
        if not summary_path.exists():
            continue
        summary = read_json(summary_path)
        if stage == "05_evaluate":
            m["eval"] = {b: {"accuracy": s["accuracy"], "n": s["n"], "mean_steps": s["mean_steps"],
                             "mean_step_tokens": s["mean_step_tokens"]} for b, s in summary.items()}
        elif stage == "03_judging":
            m["judge"] = {f: summary[f] for f in JUDGE_FIELDS + ("n", "shots") if f in summary}
        elif stage == TEST_TIME_STAGE:
            m["test_time"] = summary
        elif stage in ("02_step_search", "04_step_dpo"):
            m[STAGE_KEYS[stage]] = {k2: v for k2, v in summary.items() if k2 != "log_history"}
        if stage == PREFERENCE_STAGE and (layout.stage_dir(arm, k, stage) / DIAGNOSTICS).exists():
            diagnostics = read_json(layout.stage_dir(arm, k, stage) / DIAGNOSTICS)
            m["pairs"] = {k2: v for k2, v in diagnostics.items() if k2 not in ("stage_key", "version")}
    if "M0" in out and not out["M0"]["eval"] and "judge" not in out["M0"]:
        del out["M0"]  # a run made before M0 was judged and evaluated: no empty row for it
    return out


def is_measurement(path: Sequence[str]) -> bool:
    """Whether the value at `path` (keys below an M_k cell) is a measurement (`MEASUREMENTS`)."""
    for pattern in MEASUREMENTS:
        if pattern[-1] == "**":
            if len(path) >= len(pattern) - 1 and all(p in ("*", x) for p, x in zip(pattern[:-1], path)):
                return True
        elif len(path) == len(pattern) and all(p in ("*", x) for p, x in zip(pattern, path)):
            return True
    return False


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _spread(values: list) -> dict:
    present = [v for v in values if v is not None]
    return {"mean": round(statistics.fmean(present), 3) if present else None,
            "sd": round(statistics.stdev(present), 3) if len(present) > 1 else None,
            "per_seed": values}


def _aggregate(per_seed: list[Any], path: tuple[str, ...] = ()) -> Any:
    """Several seeds' values at one place: measurements as {mean, sd, per_seed}, settings once
    when the seeds agree, else {per_seed}; dicts key by key (keys every seed has)."""
    if all(isinstance(s, dict) for s in per_seed):
        keys = [k for k in per_seed[0] if all(k in s for s in per_seed)]
        return {k: _aggregate([s[k] for s in per_seed], path + (k,)) for k in keys}
    if is_measurement(path) and all(_number(v) or v is None for v in per_seed) and any(_number(v) for v in per_seed):
        return _spread(per_seed)
    if all(v == per_seed[0] for v in per_seed):
        return per_seed[0]
    return {"per_seed": per_seed}


def value(x: Any) -> Any:
    """A measurement's value: the mean of several seeds, or the one seed's number (None for a
    value that differs by seed and is no measurement)."""
    return x.get("mean") if isinstance(x, dict) else x


def spread(x: Any) -> float | None:
    """A measurement's sd over seeds (None for one seed)."""
    return x.get("sd") if isinstance(x, dict) else None


def _loop_models(cells: dict) -> list[str]:
    """The models the loop made, in order: M1 .. M(K+1), without M0."""
    return sorted((m for m in cells if m != "M0"), key=lambda m: int(m[1:]))


def _gains(chains: list[dict[str, dict]]) -> dict:
    """Per benchmark: last M_k minus M1 accuracy, per seed, with mean and sd."""
    models = _loop_models(chains[0]) if chains else []
    if not models:
        return {}
    first, last = models[0], models[-1]
    out = {}
    for bench in chains[0][first].get("eval", {}):
        per_seed = []
        for chain in chains:
            a, b = chain.get(first, {}).get("eval", {}).get(bench), chain.get(last, {}).get("eval", {}).get(bench)
            per_seed.append(round(b["accuracy"] - a["accuracy"], 3) if a and b else None)
        out[bench] = {"from": first, "to": last, **_spread(per_seed)}
    return out


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
    arms, gains = {}, {}
    for arm in params.run.arms:
        per_seed = [_chain_metrics(params, seed, arm) for seed in params.run.seeds]
        models = [m for m in per_seed[0] if all(m in chain for chain in per_seed)]
        arms[arm] = per_seed[0] if len(per_seed) == 1 else {m: _aggregate([c[m] for c in per_seed]) for m in models}
        gains[arm] = _gains(per_seed)
    resolved = run_root(params) / "params.json"
    code = read_json(resolved).get("code") if resolved.exists() else None
    metrics = {"run": params.run.name, "seeds": list(params.run.seeds), "code": code, "params": params.to_dict(),
               "arms": arms, "gains": gains}
    data = _data_provenance(params)
    if data:
        metrics["data"] = data
    return metrics


# ----------------------------------------------------------------------------- tables


def _fmt(cell: Any, key: str = "accuracy") -> str:
    """`mean ± sd` (several seeds) or the value; – when absent."""
    if not isinstance(cell, dict) or key not in cell or value(cell[key]) is None:
        return "–"
    sd = spread(cell[key])
    return f"{value(cell[key]):.1f} ± {sd:.1f}" if sd is not None else f"{value(cell[key]):.1f}"


def _num(v: Any) -> str:
    v = value(v)
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


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.1f}".replace("-", "−")


def _models(metrics: dict) -> list[str]:
    return sorted({m for a in metrics["arms"].values() for m in a}, key=lambda s: int(s[1:]))


def _benches(metrics: dict) -> list[str]:
    return sorted({b for a in metrics["arms"].values() for m in a.values() for b in m.get("eval", {})})


def _label(arm: str, m: str, cell: dict) -> str:
    shared = cell.get("same_model_as")
    return f"{arm.upper()}-{m}" + (f" (= {shared.upper()}-{m})" if shared else "")


def accuracy_table(metrics: dict) -> list[str]:
    benches, arms = _benches(metrics), metrics["arms"]
    many = len(benches) > 1
    lines = ["| Model | " + " | ".join(benches) + (" | Avg. |" if many else " |"),
             "|---|" + "---|" * (len(benches) + many)]
    for arm, data in arms.items():
        for m in _models(metrics):
            if m not in data:
                continue
            cells = [data[m].get("eval", {}).get(b) for b in benches]
            row = f"| {_label(arm, m, data[m])} | " + " | ".join(_fmt(c) for c in cells)
            if many:
                vals = [value(c["accuracy"]) for c in cells if c]
                row += f" | {statistics.fmean(vals):.1f}" if vals else " | –"
            lines.append(row + " |")
    return lines


def _gains_of_cells(metrics: dict) -> dict:
    """Last minus first accuracy from one seed's cells (metrics written before `gains` existed)."""
    out: dict = {}
    for arm, data in metrics["arms"].items():
        models = _loop_models(data)
        for bench, first in data[models[0]].get("eval", {}).items() if models else ():
            last = data[models[-1]].get("eval", {}).get(bench)
            if last and _number(first.get("accuracy")) and _number(last.get("accuracy")):
                diff = round(last["accuracy"] - first["accuracy"], 3)
                out.setdefault(arm, {})[bench] = {"from": models[0], "to": models[-1], "mean": diff, "sd": None,
                                                  "per_seed": [diff]}
    return out


def gains_table(metrics: dict) -> list[str]:
    gains = metrics.get("gains") or _gains_of_cells(metrics)
    rows = [(arm, bench, g) for arm, per in gains.items() for bench, g in per.items()]
    if not rows:
        return ["(no accuracy of a first and a last model)"]
    seeds = metrics.get("seeds", [])
    lines = [f"| Arm | benchmark | {rows[0][2]['to']} − {rows[0][2]['from']} per seed ({', '.join(map(str, seeds))}) "
             "| mean ± sd |", "|---|---|---|---|"]
    for arm, bench, g in rows:
        mean = _signed(g["mean"]) + (f" ± {g['sd']:.1f}" if g.get("sd") is not None else "")
        lines.append(f"| {arm} | {bench} | {', '.join(_signed(v) for v in g['per_seed'])} | {mean} |")
    return lines


def _judged(data: dict) -> bool:
    """The arm judged a model of its own (not only the M1 it shares with another arm)."""
    return any("judge" in c and "same_model_as" not in c for c in data.values())


def _judge_label(m: str, judged: dict) -> str:
    """A model's row; a judge shown worked examples first says how many (M0: `m0.judge_shots`)."""
    shots = {value(d.get(m, {}).get("judge", {}).get("shots")) for d in judged.values()} - {None, 0}
    return f"{m} ({shots.pop():.0f}-shot)" if len(shots) == 1 else m


def judge_table(metrics: dict) -> list[str]:
    judged = {a: d for a, d in metrics["arms"].items() if _judged(d)}
    if not judged:
        return ["(no model was judged)"]
    lines = ["| Model | " + " | ".join(f"{a.upper()} accuracy | position consistency | parse rate" for a in judged) + " |",
             "|---|" + "---|---|---|" * len(judged)]
    for m in _models(metrics):
        row = f"| {_judge_label(m, judged)} |"
        for data in judged.values():
            j = data.get(m, {}).get("judge")
            row += f" {_fmt(j)} | {_fmt(j, 'position_consistency')} | {_fmt(j, 'parse_rate')} |"
        lines.append(row)
    return lines


def scaling_table(metrics: dict) -> list[str]:
    """Per model that ran the test-time search: greedy decoding and the step search on the same
    problems, accuracy per benchmark and generated tokens per problem."""
    rows = [(arm, m, c["test_time"]) for arm, data in metrics["arms"].items() for m, c in data.items()
            if c.get("test_time")]
    if not rows:
        return ["(no test-time search in this run: `test_time.problems` is 0, or no arm judges its own steps)"]
    rows.sort(key=lambda r: (list(metrics["arms"]).index(r[0]), int(r[1][1:])))
    benches = sorted({b for _, _, t in rows for b in t})
    many = len(benches) > 1
    lines = ["| Model | decoding | " + " | ".join(f"{b} (n)" for b in benches) + (" | Avg." if many else "")
             + " | tokens / problem |", "|---|---|" + "---|" * (len(benches) + many + 1)]
    for arm, m, t in rows:
        for half, name in (("greedy", "greedy"), ("search", "step search")):
            cells = [t.get(b, {}).get(half) for b in benches]
            accs = [_fmt(c) + (f" ({value(t[b]['n']):.0f})" if c else "") for b, c in zip(benches, cells)]
            tokens = [value(c["mean_tokens"]) for c in cells if c and value(c.get("mean_tokens")) is not None]
            avg = [value(c["accuracy"]) for c in cells if c and value(c.get("accuracy")) is not None]
            lines.append(f"| {arm.upper()}-{m} | {name} | " + " | ".join(accs)
                         + ((f" | {statistics.fmean(avg):.1f}" if avg else " | –") if many else "")
                         + (f" | {statistics.fmean(tokens):.0f} |" if tokens else " | – |"))
    return lines


TEST_TIME_NOTE = (
    "The first problems of each benchmark (`test_time.problems`; n in brackets), solved by each model with "
    "greedy decoding and with its own step search (the search of the preference stage: `search.width` "
    "candidates per step, every ordered pair judged by the model itself, the best continued, no pairs kept), "
    "graded alike. Tokens / problem: generated tokens per problem (the search's candidate steps and "
    "judgments), the mean over benchmarks.")


def pairs_table(metrics: dict) -> list[str]:
    rows = [(arm, m, c["pairs"]) for arm, data in metrics["arms"].items() for m, c in data.items() if "pairs" in c]
    if not rows:
        return ["(no pair diagnostics in these metrics: the task has no answer key, or the run predates them)"]
    rows.sort(key=lambda r: (list(metrics["arms"]).index(r[0]), int(r[1][1:])))
    lines = ["| Arm | Model | pairs | " + " | ".join(h for _, h in PAIR_COLUMNS)
             + " | judge on own pairs | scorer on own candidates | expansions with a right candidate |",
             "|---|---|---|" + "---|" * (len(PAIR_COLUMNS) + 3)]
    for arm, m, p in rows:
        own_v, own_s, exp = p.get("own_verdicts", {}), p.get("own_scores", {}), p.get("expansions", {})
        lines.append(
            f"| {arm} | {m} | {_fmt(p, 'n')} | " + " | ".join(_fmt(p, k) for k, _ in PAIR_COLUMNS)
            + f" | {_fmt(own_v)}{_n(own_v)} | {_fmt(own_s)}{_n(own_s)} | {_fmt(exp, 'any_right')}{_n(exp)} |")
    return lines


def _n(cell: dict) -> str:
    return f" (n {value(cell['n']):.0f})" if cell and value(cell.get("n")) else ""


PAIRS_NOTE = (
    "Pairs checked with the task's answer key after the fact (never an input of any loop): a step is "
    "right when it makes the claim of the reference next step given the steps before it and ends the "
    "solution exactly when the reference does; an SRLM solution by its final answer. Judge on own pairs: "
    "the self-judge's ordered comparisons of its own candidates with exactly one right, the share whose "
    "verdict names it. Scorer on own candidates: candidate pairs with exactly one right, the share where "
    "it scored higher (wins; the key's 1/0 for the verified arm; mean ratings for SRLM). Percent of n.")


JUDGE_NOTE = ("M0 is the model before warm-up (one model for every arm: its columns agree), judged with worked "
              "examples from the EFT training data before each pair (its row says how many); M1 on are judged "
              "zero-shot, as the warm-up taught them.")


def report_markdown(metrics: dict) -> str:
    seeds = metrics.get("seeds", [])
    lines = [f"# Run `{metrics['run']}`", "",
             f"Seeds: {seeds}" + (" (cells: mean ± sd over seeds)" if len(seeds) > 1 else ""), "",
             _code_line(metrics.get("code")), "",
             *_data_lines(metrics.get("data", {})),
             "## Accuracy (%) by iteration (paper Table 1 layout)", "", *accuracy_table(metrics), "",
             "## Last minus first model, per seed", "", *gains_table(metrics), "",
             "## Step-wise judge on held-out step pairs (paper Table 3 layout)", "", JUDGE_NOTE, "",
             *judge_table(metrics), "",
             "## Test-time scaling: greedy decoding against the self-judged step search (paper Table 5 layout)", "",
             TEST_TIME_NOTE, "", *scaling_table(metrics), "",
             "## Pair diagnostics (answer key)", "", PAIRS_NOTE, "", *pairs_table(metrics), "",
             "## Steps per solution / tokens per step (paper Tables 4, 7, 8)", ""]
    benches = _benches(metrics)
    lines += ["| Model | " + " | ".join(f"{b} steps | {b} tokens/step" for b in benches) + " |",
              "|---|" + "---|---|" * len(benches)]
    for arm, data in metrics["arms"].items():
        for m in _models(metrics):
            if m not in data:
                continue
            ev = data[m].get("eval", {})
            row = f"| {_label(arm, m, data[m])} |"
            for b in benches:
                c = ev.get(b)
                row += f" {value(c['mean_steps']):.2f} | {value(c['mean_step_tokens']):.1f} |" if c else " – | – |"
            lines.append(row)
    lines += ["", "## Preference data per iteration", "",
              "| Arm | Model | pairs | questions | other |", "|---|---|---|---|---|"]
    for arm, data in metrics["arms"].items():
        for m in _models(metrics):
            s = data.get(m, {}).get("search")
            if not s:
                continue
            other = {k: v for k, v in s.items() if k in ("finished_rate", "unanimous", "ties", "rollbacks",
                                                          "parse_rate", "position_consistency", "score_parse_rate")}
            lines.append(f"| {arm} | {m} | {_num(s.get('pairs', '–'))} | {_num(s.get('questions', '–'))} | "
                         + ", ".join(f"{k} {_num(v)}" for k, v in other.items()) + " |")
    return "\n".join(lines) + "\n"


def _code_line(code: dict | None) -> str:
    if not code or not code.get("commit"):
        return "Code: not recorded (a run made outside a git checkout, or before runs recorded it)."
    state = "with uncommitted changes" if code.get("dirty") else "clean working tree"
    line = f"Code: commit `{code['commit'][:12]}` ({code.get('committed') or 'date unknown'}; {state})"
    earlier = [e["commit"][:12] for e in code.get("earlier", []) if e.get("commit")]
    if earlier:
        line += f"; resumed from earlier invocations at {', '.join(f'`{c}`' for c in earlier)}"
    return line + "."


# ----------------------------------------------------------------------------- figures


def figures(metrics: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = metrics["arms"]
    paths = []

    def plot(name: str, panels: list[tuple[str, dict[str, tuple[list[int], list, list]]]]) -> None:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
        for ax, (ylabel, series) in zip(axes[0], panels):
            for label, (xs, ys, sds) in series.items():
                dashed = "own candidates" in label or label.endswith(" greedy")  # the line a solid one is compared with
                ax.errorbar(xs, ys, yerr=[s or 0 for s in sds] if any(sds) else None, marker="o", capsize=3,
                            label=label, linestyle="--" if dashed else "-")
            ax.set_xlabel("model M_k")
            ax.set_ylabel(ylabel)
            ax.set_xticks(sorted({x for xs, _, _ in series.values() for x in xs}) or [1])
            ax.grid(alpha=0.3)
            if series:
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

    def models(data: dict) -> list[tuple[int, dict]]:
        return sorted(((int(m[1:]), v) for m, v in data.items()), key=lambda t: t[0])

    def series(data: dict, get) -> tuple[list[int], list, list]:
        pts = [(k, get(v)) for k, v in models(data)]
        pts = [(k, x) for k, x in pts if value(x) is not None]
        return [k for k, _ in pts], [value(x) for _, x in pts], [spread(x) for _, x in pts]

    acc, judge, steps, quality, own, scaled = {}, {}, {}, {}, {}, {}
    for arm, data in arms.items():
        for b in sorted({b for _, v in models(data) for b in v.get("test_time") or {}}):
            for half in ("greedy", "search"):
                scaled[f"{arm} {b} {half}"] = series(
                    data, lambda v: (v.get("test_time") or {}).get(b, {}).get(half, {}).get("accuracy"))
        benches = sorted({b for _, v in models(data) for b in v.get("eval", {})})
        for b in benches:
            acc[f"{arm} {b}"] = series(data, lambda v: v.get("eval", {}).get(b, {}).get("accuracy"))
            xs, ys, _ = series(data, lambda v: v.get("eval", {}).get(b, {}).get("mean_steps"))
            steps[f"{arm} {b}"] = (xs, ys, [None] * len(xs))
        if _judged(data):
            judge[arm] = series(data, lambda v: v.get("judge", {}).get("accuracy"))
        if any("pairs" in v for v in data.values()):
            quality[arm] = series(data, lambda v: v.get("pairs", {}).get("right_over_wrong"))
            if any(value(v.get("pairs", {}).get("own_verdicts", {}).get("n")) for v in data.values()):
                own[f"{arm} judge on own pairs"] = series(data, lambda v: v.get("pairs", {}).get("own_verdicts", {}).get("accuracy"))
            own[f"{arm} scorer on own candidates"] = series(data, lambda v: v.get("pairs", {}).get("own_scores", {}).get("accuracy"))
    plot("accuracy_by_iteration.png", [("greedy accuracy (%)", acc)])
    plot("judge_by_iteration.png", [("step-pair judge accuracy (%)", judge)])
    plot("steps_by_iteration.png", [("mean steps per solution", steps)])
    plot("pairs_by_iteration.png", [("pairs right > wrong (%)", quality), ("right ranked above wrong (%)", own)])
    plot("test_time_by_iteration.png", [("accuracy on the test-time problems (%)", scaled)])
    return paths


# ----------------------------------------------------------------------------- writing


def render_report(metrics: dict, root: Path) -> None:
    """report.md and the figures of a run from its metrics."""
    atomic_write_text(root / "report.md", report_markdown(metrics))
    figures(metrics, root)


def write_report(params: Params) -> dict:
    """Diagnose, collect, then write metrics.json, report.md and the figures into the run folder."""
    root = run_root(params)
    diagnose_run(params)
    metrics = collect_metrics(params)
    write_json(root / "metrics.json", metrics)
    render_report(metrics, root)
    return metrics


def readme_block(metrics: dict, metrics_path: str) -> str:
    """The README's results: accuracy, last-minus-first per seed, judge and pair diagnostics,
    and the code the run was made with. `metrics_path`: how the README names the metrics file."""
    code = metrics.get("code") or {}
    seeds = metrics.get("seeds", [])
    head = [f"Generated from `{metrics_path}` (run `{metrics['run']}`, seeds {seeds}) by "
            f"`psr report {Path(metrics_path).parent} --readme README.md`; do not edit by hand.",
            _code_line(code)]
    if code.get("commit"):
        head.append(f"`git log {code['commit'][:12]}..HEAD` lists the changes to the code since.")
    run = Path(metrics_path).parent.as_posix()
    return "\n".join([
        " ".join(head), "",
        "Accuracy (%)" + (" (mean ± sd over seeds)" if len(seeds) > 1 else "") + ":", "", *accuracy_table(metrics), "",
        *gains_table(metrics), "",
        f"![accuracy by iteration]({run}/accuracy_by_iteration.png)", "",
        "Step-wise judge on held-out step pairs (%): " + JUDGE_NOTE, "", *judge_table(metrics), "",
        "Test-time scaling (%): " + TEST_TIME_NOTE, "", *scaling_table(metrics), "",
        "Pair diagnostics (%): " + PAIRS_NOTE, "", *pairs_table(metrics), "",
        f"![pair diagnostics by iteration]({run}/pairs_by_iteration.png)",
    ])


def update_readme(readme: Path, block: str) -> bool:
    """Replace what lies between the README's result markers with `block`; True if it changed.
    The markers must be there, once each and in order."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or not pattern.search(text):
        raise ValueError(f"{readme}: needs one {README_BEGIN} line and, after it, one {README_END} line")
    new = pattern.sub(lambda _: f"{README_BEGIN}\n{block.rstrip()}\n{README_END}", text)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def report_run(run_dir: str | Path, readme: str | Path | None = None, collect: bool = False) -> dict:
    """`psr report`: a run's report.md and figures from its metrics.json (after collecting
    metrics.json again from the run's stage files when `collect`: that needs the run's
    done-markers for the wall times, so only where the run was made), and with `readme` the
    README's results block."""
    run_dir = Path(run_dir)
    if collect:
        params = load(run_dir / "params.json", [f"run.results_dir={run_dir.parent}", f"run.name={run_dir.name}"])
        metrics = write_report(params)
    else:
        metrics = read_json(run_dir / "metrics.json")
        render_report(metrics, run_dir)
    if readme is not None:
        readme = Path(readme)
        where = Path(os.path.relpath(run_dir / "metrics.json", readme.resolve().parent)).as_posix()
        update_readme(readme, readme_block(metrics, where))
    return metrics
