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
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

from psr.io import append_jsonl, read_jsonl
from psr.judge import judge_pairs_accuracy
from psr.records import EFTRecord, IFTRecord
from psr.study import stages
from psr.study.context import Context
from psr.study.data import load_records
from psr.tools.warmup_probe import measure
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
    own_pairs = read_jsonl("/tmp/probes/own_pairs_test_s0.jsonl", EFTRecord)

    def own(policy) -> dict:
        r = judge_pairs_accuracy(own_pairs, policy, ctx.params.judge)
        return {"own_pairs_judge": r["accuracy"], "own_pairs_parse": r.get("parse_rate")}

    out.update(measure(ctx, also=own))
    print(json.dumps(out), flush=True)
    append_jsonl(Path("results/levers/probes.jsonl"), [out])


if __name__ == "__main__":
    main()
