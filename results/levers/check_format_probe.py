"""One lever, measured once (seed 0): EFT judgments that check each candidate on its own instead of
first writing the judge's own next step. Phase 2 as in `own_negatives_probe` rows: 1000 more SFT
steps from the 6000-step M1 (`/tmp/probes/long6k-s0`, made by `warmup_probe long6k-s0 0
warmup.max_steps=6000`) on IFT + the same EFT records, their judgment text rewritten:

    now:    Next: 9 * 2 = 18. A: 18 ok. B: 7 no. [[A]]
    check:  A: 9 * 2 = 18. 9 ok, * 2 ok, 18 ok. B: 9 - 2 = 7. 9 ok, - 2 no. [[A]]

(each candidate: does it start from the previous result, does it apply the question's next
operation, is its own arithmetic right). The control is `own-ctl1k-s0` (the same 1000 steps on the
unchanged EFT). Measured as the probes are, plus the judge on the 613 own pairs of
`own_pairs_probe.py`. `python results/levers/check_format_probe.py` appends one line to
`results/levers/probes.jsonl`."""
import collections
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

from psr.answer_key import SyntheticKey
from psr.diagnostics import step_pair_kinds
from psr.io import append_jsonl, read_jsonl
from psr.judge import judge_pairs_accuracy
from psr.records import EFTRecord, IFTRecord
from psr.study import stages
from psr.study.context import Context
from psr.study.data import load_records
from psr.tasks.synthetic import apply_op, boxed_value, parse_question, reference_next
from psr.train import sft_examples, warmup_sft

EQ = re.compile(r"^(-?\d+) ([+\-*]) (\d+) = (-?\d+)$")


def check_line(question: str, previous: list[str], step: str) -> tuple[str, bool]:
    """The candidate checked on its own: start, operation, arithmetic (the first failure ends it)."""
    chain = parse_question(question)
    expected = reference_next(question, previous)
    want_final = boxed_value(expected) is not None
    value = boxed_value(step)
    if value is not None:
        if not want_final:
            return f"answer {value}. early no.", False
        ok = str(value) == str(boxed_value(expected))
        return f"answer {value}. {boxed_value(expected) if ok else value} {'ok' if ok else 'no'}.", ok
    m = EQ.match(step.strip())
    if not m:
        return f"{step.strip()}. no.", False
    a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
    if want_final:
        return f"{step.strip()}. done no.", False
    cur = int(EQ.match(expected)[1])
    parts, ok = [], True
    for text, good in ((f"{a}", a == cur), (f"{op} {b}", (op, b) == tuple(chain.ops[len(previous)])),
                       (f"{c}", c == apply_op(a, op, b))):
        parts.append(f"{text} {'ok' if good else 'no'}")
        if not good:
            ok = False
            break
    return f"{step.strip()}. {', '.join(parts)}.", ok


def check_judgment(r: EFTRecord) -> str:
    line_a, ok_a = check_line(r.question, r.previous_steps, r.step_a)
    line_b, ok_b = check_line(r.question, r.previous_steps, r.step_b)
    assert ok_a != ok_b and ("A" if ok_a else "B") == r.verdict, (r, line_a, line_b)
    return f"A: {line_a} B: {line_b} [[{r.verdict}]]"


def main() -> None:
    src = Path("/tmp/probes/long6k-s0")
    name = "check1k-s0"
    run = Path("/tmp/probes") / name
    base = [f"run.name={name}", "run.results_dir=/tmp/probes", "run.seeds=[0]", "run.arms=[psrlm]", "run.iterations=1",
            "warmup.max_steps=6000", "eval.limit=300", "eval.judge_limit=200", "judge.max_new_tokens=96"]
    if not (run / "data").exists():
        shutil.copytree(src / "data", run / "data")
    ctx = Context.create("params/tiny.yaml", base, 0, "psrlm", 1)
    tok = stages._tokenizer(ctx)
    ift = load_records(ctx.layout.data_dir, "ift", IFTRecord)
    eft = [replace(r, judgment=check_judgment(r)) for r in load_records(ctx.layout.data_dir, "eft", EFTRecord)]
    print(eft[0].judgment, eft[3].judgment, sep="\n", flush=True)
    t0 = time.perf_counter()
    warmup_sft(ctx.params.replace({"warmup.max_steps": 1000}), sft_examples(ift, eft, ctx.templates, tok), ctx.model_dir,
               base=src / "psrlm" / "M1" / "model", tokenizer=tok, seed=0, phase2={"judgment": "check", "steps": 1000})
    out = {"name": name, "seed": 0, "over": ["phase 2: 1000 steps, check-format EFT judgments", "judge.max_new_tokens=96"],
           "warm_s": round(time.perf_counter() - t0)}
    with stages.policy_for(ctx) as policy:
        acc = stages.evaluate_stage(ctx, policy)["synthetic"]["accuracy"]
        judge = stages.judging_stage(ctx, policy)
        own = judge_pairs_accuracy(read_jsonl("/tmp/probes/own_pairs_test_s0.jsonl", EFTRecord), policy, ctx.params.judge)
        stages.preference_stage(ctx, policy)
    test = {p["id"]: p for p in read_jsonl(ctx.layout.data_dir / "test.jsonl")}
    by_ops = collections.defaultdict(list)
    for row in read_jsonl(ctx.layout.stage_dir("psrlm", 1, "05_evaluate") / "synthetic.jsonl"):
        by_ops[test[row["id"]]["n_ops"]].append(row["correct"])
    pairs = stages.preference_pairs(ctx)
    out.update(acc=acc, acc_by_ops={k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by_ops.items())},
               judge=judge["accuracy"], consistency=judge["position_consistency"], own_pairs_judge=own["accuracy"],
               own_pairs_parse=own.get("parse_rate"), pairs=dict(collections.Counter(step_pair_kinds(pairs, SyntheticKey()))),
               n_pairs=len(pairs))
    print(json.dumps(out), flush=True)
    append_jsonl(Path("results/levers/probes.jsonl"), [out])


if __name__ == "__main__":
    main()
