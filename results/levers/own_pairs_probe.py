"""Own-pair judge accuracy on the test problems' prefixes (the held-out EFT prefixes drew too few
wrong steps from the 6000-step model): every prefix of every test problem, 6 samples of the
phase-1 model at T=1.0, its first wrong step (answer key, claim differs) against the right step,
verdict slots alternating; each model judges the same pairs in both orders.
`python results/levers/own_pairs_probe.py PAIRS_FROM_MODEL [NAME=MODEL_DIR ...]`"""
import json, sys
from pathlib import Path
from psr.answer_key import SyntheticKey
from psr.config import load
from psr.io import read_jsonl, write_jsonl
from psr.judge import judge_pairs_accuracy
from psr.own_negatives import Sampling, mix_own_negatives
from psr.records import EFTRecord, Problem
from psr.study import stages
from psr.study.context import Context

base = ["run.name=long6k-s0", "run.results_dir=/tmp/probes", "run.seeds=[0]", "run.arms=[psrlm]", "run.iterations=1", "warmup.max_steps=6000"]
ctx = Context.create("params/tiny.yaml", base, 0, "psrlm", 1)
out = Path("/tmp/probes/own_pairs_test_s0.jsonl")
if not out.exists():
    prefixes = []
    for p in read_jsonl(ctx.layout.data_dir / "test.jsonl", Problem):
        for d in range(len(p.steps)):
            v = "A" if len(prefixes) % 2 == 0 else "B"
            a, b = (p.steps[d], "?") if v == "A" else ("?", p.steps[d])
            prefixes.append(EFTRecord(f"{p.id}@{d}", p.question, p.steps[:d], a, b, v, ""))
    with stages.policy_for(ctx, Path(sys.argv[1])) as policy:
        _, own = mix_own_negatives(prefixes, policy, SyntheticKey(), Sampling(6, 1.0, 0.95, 32), share=1.0, seed=0)
    write_jsonl(out, own)
    print(json.dumps({"prefixes": len(prefixes)}))
pairs = read_jsonl(out, EFTRecord)
print(json.dumps({"pairs": len(pairs), "by_depth": {d: sum(len(p.previous_steps) == d for p in pairs) for d in range(6)}}), flush=True)
for spec in sys.argv[2:]:
    name, model = spec.split("=", 1)
    with stages.policy_for(ctx, Path(model)) as policy:
        r = judge_pairs_accuracy(pairs, policy, ctx.params.judge)
    print(json.dumps({"name": name, "own_pairs_test": r}), flush=True)
