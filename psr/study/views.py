"""Display helpers for the notebooks: tables, training curves, examples, one question's search
tree, a DPO example's token boundary, right and wrong solutions side by side, greedy decoding
against the test-time search.

They only format what the stages return or wrote, so the notebooks stay a short story of calls.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any, Iterable, Sequence

from IPython.display import HTML, Markdown

from psr.steps import join_steps, render_step


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


def _mark(right: bool | None) -> str:
    return "?" if right is None else ("✓" if right else "✗")


def samples_markdown(samples: list[dict]) -> Markdown:
    """Question, gold answer, the model's output; graded when the sample says (`correct`)."""
    parts = []
    for s in samples:
        graded = f" · answer `{s.get('extracted')}` {_mark(s['correct'])}" if "correct" in s else ""
        parts.append(f"**{s['question']}** (gold {s.get('gold', '?')}{graded})\n\n{_md_block(s['output'])}")
    return Markdown("\n\n".join(parts) or "(none)")


def ift_markdown(records: list) -> Markdown:
    """IFT records: a question and its reference solution, as the policy learns to write it."""
    parts = [f"**{r.id}**: {r.question}\n\n" + _md_block(join_steps(list(r.steps))) for r in records]
    return Markdown("\n\n---\n\n".join(parts) or "(none)")


# ----------------------------------------------------------------------------- 02: the search


def _index(candidates: Sequence[str], pick: Any) -> int | None:
    """A trace names its chosen/rejected candidate by index or by text."""
    if pick is None:
        return None
    if isinstance(pick, int):
        return pick
    return list(candidates).index(pick) if pick in candidates else None


OUTCOMES = {
    "pair": "best → chosen, worst → rejected: a preference pair; the search goes on from the chosen step",
    "unanimous": "every sample was the same step: taken as it is, no judging, no pair",
    "rollback": "all scores tie: nothing to prefer, so the previous step (and its pair) is dropped and redone",
}


def search_tree(traces: Sequence[Any], question: str = "") -> Markdown:
    """One question's step search, expansion by expansion: the steps so far, the candidates with
    their wins (chosen / rejected marked), the judge's verdict for every ordered pair (row in slot
    A, column in slot B; each cell names the winner, `?` an unparsed verdict), and the outcome.
    `traces`: objects with the fields of `psr.search.ExpansionTrace` (question_id,
    previous_steps, candidates, judgments [(i, j, "A"/"B"/None)], wins, chosen, rejected, outcome)."""
    if not traces:
        return Markdown("(no expansions traced)")
    head = f"**{traces[0].question_id}**" + (f": {question}" if question else "")
    parts = [head]
    for e, t in enumerate(traces, 1):
        step = len(t.previous_steps) + 1
        chosen, rejected = _index(t.candidates, t.chosen), _index(t.candidates, t.rejected)
        lines = [f"#### Expansion {e}: step {step}, {t.outcome}",
                 _md_block(join_steps(list(t.previous_steps)) or "(no steps yet)"),
                 "", "| # | candidate | wins | |", "|---|---|---|---|"]
        for i, c in enumerate(t.candidates):
            role = "chosen" if i == chosen else "rejected" if i == rejected else ""
            wins = t.wins[i] if i < len(t.wins) else ""
            lines.append(f"| {i + 1} | `{_cell(render_step(step, c))}` | {wins} | {role} |")
        if t.judgments:
            winner = {(i, j): (None if v is None else (i if v == "A" else j)) for i, j, v in t.judgments}
            n = len(t.candidates)
            lines += ["", "judge, slot A ↓ vs slot B →: the winner", "",
                      "| A \\ B | " + " | ".join(str(j + 1) for j in range(n)) + " |", "|---" * (n + 1) + "|"]
            for i in range(n):
                cells = ["·" if i == j else ("" if (i, j) not in winner else
                         "?" if winner[(i, j)] is None else str(winner[(i, j)] + 1)) for j in range(n)]
                lines.append(f"| **{i + 1}** | " + " | ".join(cells) + " |")
        lines += ["", f"→ {OUTCOMES.get(t.outcome, t.outcome)}"]
        parts.append("\n".join(lines))
    outcomes = [t.outcome for t in traces]
    parts.append(f"{len(traces)} expansions: {outcomes.count('pair')} pairs, {outcomes.count('rollback')} rollbacks, "
                 f"{outcomes.count('unanimous')} unanimous")
    return Markdown("\n\n".join(parts))


def scored_solutions(rows: list[dict]) -> Markdown:
    """SRLM: a question's sampled solutions as M_k scored them (mean 1-5 each) and the pair they
    gave: best vs worst, or none when the scores tie."""
    parts = []
    for r in rows:
        scores = ", ".join("–" if s is None else f"{s:.2f}" for s in r["scores"])
        text = f"**{r['id']}**: {r.get('question', '')}\n\nscores of the {len(r['scores'])} solutions: {scores}"
        pair = r.get("pair")
        if pair:
            text += (f"\n\nchosen ({pair['chosen_score']:.2f}):\n{_md_block(pair['chosen'])}"
                     f"\n\nrejected ({pair['rejected_score']:.2f}):\n{_md_block(pair['rejected'])}")
        else:
            text += "\n\nno pair: the best and the worst score tie (or fewer than two scores parsed)"
        parts.append(text)
    return Markdown("\n\n---\n\n".join(parts) or "(no scored questions)")


# ----------------------------------------------------------------------------- 03: the judge


def judged_pairs(rows: list[dict], right: int = 2, wrong: int = 2) -> Markdown:
    """Held-out step pairs with M_k's verdicts in both orders: some judged right in both orders,
    some judged wrong in at least one."""
    good = [r for r in rows if all(r["right"])][:right]
    bad = [r for r in rows if not all(r["right"])][:wrong]
    parts = []
    for title, group in (("judged right in both orders", good), ("judged wrong in at least one order", bad)):
        parts.append(f"#### {title} ({len(group)})")
        for row in group:
            r = row["record"]
            better = r.step_a if r.verdict == "A" else r.step_b
            parts.append(
                f"**{r.id}** ({r.error or 'no error label'}): {r.question}\n\n"
                + _md_block(join_steps(list(r.previous_steps)) or "(first step)")
                + f"\n\nA: `{_cell(r.step_a)}` · B: `{_cell(r.step_b)}` · better: `{_cell(better)}`\n\n"
                + f"- as given (better in slot {r.verdict}): `{row['given']}` {_mark(row['right'][0])}: "
                + f"{_cell(row['given_text'])[:300]}\n"
                + f"- swapped: `{row['swapped']}` {_mark(row['right'][1])}: {_cell(row['swapped_text'])[:300]}"
            )
    return Markdown("\n\n".join(parts))


# ----------------------------------------------------------------------------- 04: DPO


def _piece(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    return text.replace("\n", "⏎").replace(" ", "·").replace("`", "'") or "∅"


def token_boundary(example: dict, tokenizer, final: tuple[bool, bool] = (False, False), context: int = 8,
                   unit: str = "step") -> Markdown:
    """A DPO example cut into tokens as training sees it: the prompt's last `context` tokens, a
    ‖ where the prompt's tokens end, then each completion's tokens; whether the prompt's tokens
    are a prefix of prompt + completion (no token merges across the boundary), and whether the
    completion ends in EOS, which only a final step (or a whole solution, `unit="solution"`) may."""
    prompt_ids = tokenizer(example["prompt"])["input_ids"]
    eos = tokenizer.eos_token_id
    lines = [f"prompt: {len(prompt_ids)} tokens, the last {min(context, len(prompt_ids))} shown; "
             "‖ marks where the prompt's tokens end", ""]
    for side, is_final in zip(("chosen", "rejected"), final):
        full = tokenizer(example["prompt"] + example[side])["input_ids"]
        clean = full[: len(prompt_ids)] == prompt_ids
        completion = full[len(prompt_ids):]
        tail = " ".join(f"`{_piece(tokenizer, i)}`" for i in prompt_ids[-context:])
        body = " ".join(f"**`{tokenizer.eos_token}`**" if i == eos else f"`{_piece(tokenizer, i)}`" for i in completion)
        ends = bool(completion) and completion[-1] == eos
        verdict = "as it should" if ends == is_final else "WRONG"
        kind = "a whole solution" if unit == "solution" else f"{'final' if is_final else 'non-final'} step"
        lines += [
            f"**{side}** ({kind}, {len(completion)} tokens): "
            f"… {tail} **‖** {body}", "",
            f"- prompt tokens are a prefix of prompt + {side}: {'yes' if clean else 'NO (a token merges across ‖)'}",
            f"- ends in EOS: {'yes' if ends else 'no'} ({verdict}: "
            f"{'it ends the solution' if is_final else 'a non-final step is followed by the next one'})",
            "",
        ]
    return Markdown("\n".join(lines))


def dpo_pair(found: dict | None) -> Markdown:
    """`stages.dpo_example`: the pair (question, steps so far, scores) and its token boundary."""
    if found is None:
        return Markdown("(no preference pairs: M_k+1 is a copy of M_k)")
    pair = found["pair"]
    unit = "step" if hasattr(pair, "previous_steps") else "solution"
    if unit == "step":
        head = (f"**{pair.id}** (win counts {pair.scores}): {pair.question}\n\n"
                + _md_block(join_steps(list(pair.previous_steps)) or "(first step)"))
    else:
        head = f"**{pair.id}** (scores {pair.chosen_score:.2f} vs {pair.rejected_score:.2f}): {pair.question}"
    body = token_boundary(found["example"], found["tokenizer"], found["final"], unit=unit).data
    return Markdown(head + "\n\n" + body)


# ----------------------------------------------------------------------------- 05: evaluation


def _sample_html(s: dict, title: bool = True) -> str:
    head = f"<b>{html.escape(s['id'] + ': ' + s['question'])}</b><br>" if title else ""
    facts = html.escape(f"gold {s['gold']} · answer {s.get('extracted')} · {s.get('n_steps', '?')} steps · "
                        f"{s.get('tokens', '?')} tokens · {s.get('finish_reason', s.get('stop', ''))}")
    return f"{head}<i>{facts}</i><pre style='white-space: pre-wrap'>{html.escape(s['output'])}</pre>"


def right_and_wrong(right: list[dict], wrong: list[dict]) -> HTML:
    """Evaluated samples side by side: right ones on the left, wrong ones on the right."""
    rows = []
    for i in range(max(len(right), len(wrong), 1)):
        cells = [_sample_html(group[i]) if i < len(group) else ("(none)" if i == 0 else "")
                 for group in (right, wrong)]
        rows.append("<tr>" + "".join(f"<td style='vertical-align: top; text-align: left'>{c}</td>" for c in cells)
                    + "</tr>")
    return HTML("<table><tr><th>right ✓</th><th>wrong ✗</th></tr>" + "".join(rows) + "</table>")


# ----------------------------------------------------------------------------- 06: test-time scaling


def scaling_table(summary: dict[str, dict]) -> Markdown:
    """Per benchmark: greedy decoding and the step search on the same problems, accuracy and
    generated tokens per problem, and how many times the greedy tokens the search spent."""
    if not summary:
        return Markdown("(no problems: `test_time.problems` is 0)")
    lines = ["| benchmark | n | greedy accuracy | search accuracy | greedy tokens / problem | "
             "search tokens / problem (candidates + judgments) | compute | search finished (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in summary.items():
        g, s = t["greedy"], t["search"]
        ratio = f"{s['mean_tokens'] / g['mean_tokens']:.1f}×" if g["mean_tokens"] else "–"
        lines.append(f"| {name} | {t['n']} | {g['accuracy']:.1f} | {s['accuracy']:.1f} | {g['mean_tokens']:.0f} | "
                     f"{s['mean_tokens']:.0f} ({s['mean_candidate_tokens']:.0f} + {s['mean_judge_tokens']:.0f}) | "
                     f"{ratio} | {s['finished_rate']:.1f} |")
    return Markdown("\n".join(lines))


def search_and_greedy(search_only: list[dict], greedy_only: list[dict]) -> HTML:
    """Problems only one way solved, side by side: solved by the search alone on the left, by
    greedy decoding alone on the right; each with both solutions."""
    def both(x: dict) -> str:
        return (f"<b>{html.escape(x['search']['id'] + ': ' + x['search']['question'])}</b><br>"
                + "search: " + _sample_html(x["search"], title=False)
                + "greedy: " + _sample_html(x["greedy"], title=False))

    rows = []
    for i in range(max(len(search_only), len(greedy_only), 1)):
        cells = [both(group[i]) if i < len(group) else ("(none)" if i == 0 else "")
                 for group in (search_only, greedy_only)]
        rows.append("<tr>" + "".join(f"<td style='vertical-align: top; text-align: left'>{c}</td>" for c in cells)
                    + "</tr>")
    head = "<tr><th>search ✓ greedy ✗</th><th>greedy ✓ search ✗</th></tr>"
    return HTML("<table>" + head + "".join(rows) + "</table>")
