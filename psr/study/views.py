"""Small display helpers for the notebooks: markdown tables and training curves.

They only format what the stages return, so the notebooks stay a short story of calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from IPython.display import Markdown

from psr.steps import join_steps


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{len(v)} values]"
    return str(v).replace("|", "\\|").replace("\n", " ")


def kv_table(d: dict, title: str = "") -> Markdown:
    rows = [f"| {k} | {_cell(v)} |" for k, v in d.items() if not isinstance(v, dict)]
    head = f"**{title}**\n\n" if title else ""
    return Markdown(head + "| key | value |\n|---|---|\n" + "\n".join(rows))


def summary_table(summaries: dict[str, dict]) -> Markdown:
    if not summaries:
        return Markdown("(nothing evaluated)")
    cols = list(next(iter(summaries.values())).keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(s.get(c)) for c in cols) + " |" for s in summaries.values()]
    return Markdown("\n".join(lines))


def plot_log_history(log_history: list[dict], keys: Iterable[str], title: str = "") -> None:
    """One panel per logged metric against the trainer's step."""
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in row for row in log_history)]
    if not keys:
        print("no training log to plot (stage was skipped or logged nothing)")
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(row.get("step", i), row[key]) for i, row in enumerate(log_history) if key in row]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.show()


def _md_block(text: str) -> str:
    return "```\n" + text.replace("```", "'''") + "\n```"


def examples_table(records: list) -> Markdown:
    """EFT records: question / earlier steps / the two candidates / judgment (PSRLM), or
    question / response / judgment (SRLM's solution scoring)."""
    parts = []
    for r in records:
        d = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
        if "response" in d:  # SRLM solution-scoring EFT
            parts.append(f"**{d['id']}**: {d['question']}\n\n" + _md_block(d["response"])
                         + f"\n\njudgment: `{d['judgment']}`")
            continue
        parts.append(
            f"**{d['id']}** ({d.get('error', '')}): {d['question']}\n\n"
            + _md_block(join_steps(d["previous_steps"]) or "(no earlier steps)")
            + f"\n\nA: `{d['step_a']}` · B: `{d['step_b']}` → judgment: `{d['judgment']}`"
        )
    return Markdown("\n\n---\n\n".join(parts) or "(none)")


def pairs_markdown(pairs: list) -> Markdown:
    """Preference pairs: step pairs (PSRLM) or whole-solution pairs (SRLM)."""
    parts = []
    for p in pairs:
        d = dataclasses.asdict(p)
        if "previous_steps" in d:
            parts.append(
                f"**{d['id']}** scores {d['scores']}: {d['question']}\n\n"
                + _md_block(join_steps(d["previous_steps"]) or "(first step)")
                + f"\n\nchosen: `{d['chosen']}`\n\nrejected: `{d['rejected']}`"
            )
        else:
            parts.append(
                f"**{d['id']}** ({d['chosen_score']:.2f} vs {d['rejected_score']:.2f}): {d['question']}\n\n"
                f"chosen:\n{_md_block(d['chosen'])}\n\nrejected:\n{_md_block(d['rejected'])}"
            )
    return Markdown("\n\n---\n\n".join(parts) or "(no pairs)")


def samples_markdown(samples: list[dict]) -> Markdown:
    return Markdown(
        "\n\n".join(f"**{s['question']}** (gold {s.get('gold', '?')})\n\n{_md_block(s['output'])}" for s in samples)
        or "(none)"
    )
