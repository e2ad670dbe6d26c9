"""Step-DPO learning-rate / beta sweep from M1 of the embedded tiny study (issue #6 item 6).

Question: does step-DPO move the ~0.7M-parameter tiny model at all, and which (lr, beta) would?
It reuses the study's own code paths: `psr.train.step_dpo_examples` + `psr.train.step_dpo` (TRL's
DPOTrainer with the StepDPO EOS fix) for training and `psr.evaluate.evaluate` (greedy, the tiny
preset's eval params) for accuracy. Nothing under results/tiny is modified; models, samples and
the result JSON go to --work (default /tmp/dpo_sweep/work).

What it does:
1. Loads params/tiny.yaml and checks that its task/model/prompts/dpo/eval sections equal those the
   reference run recorded in results/tiny/params.json.
2. Builds a validation set that is NOT the seed-0 test split: the test split of the synthetic
   generator at seed 1000 (own RNG streams `psr-synthetic:1000:test`), dropping any question that
   occurs in any seed-0 split written to results/tiny/data (test, pools, IFT, EFT, EFT-test, SRLM-EFT);
   the first 300 remaining problems are used. The seed-0 test split is never evaluated.
3. Greedy accuracy of M1 (results/tiny/psrlm/M1/model) on it.
4. Step-DPO from M1 on M1's search pairs (results/tiny/psrlm/M1/02_step_search/ppd.jsonl) for
   (lr, beta) in {1e-5, 1e-4, 1e-3, 3e-3} x {0.1} + (1e-4, 0.5) + (1e-3, 0.5), under three
   schedules (all other values from the tiny preset's `dpo` section):
     preset  : the preset as is (batch 32, 1 epoch, cosine, warmup_ratio 0.1)
     warmup0 : the same with dpo.warmup_ratio=0
     16steps : dpo.batch_size=8 (per device 8), dpo.epochs=4 -> 16 optimizer steps, warmup 0.1
   For each: TRL's last logged train metrics (computed on the batch *before* that step's update),
   the DPO metrics of the trained model vs M1 after training (TRL `evaluate`) on the training pairs
   and on held-out pairs (M2's search pairs: M2 is bit-identical to M1 in the reference run, so these
   are M1's own pairs on pool-2 questions, and a copy of them oriented by the oracle, correct step
   chosen), the relative weight change ||theta - theta_M1|| / ||theta_M1||, and validation greedy
   accuracy, mean steps, boxed-answer ("finished") rate, EOS rate, truncations and flips vs M1.
   Also (3e-5, 0.1) under warmup0 and 16steps (not in the issue's grid: between the harmless
   1e-5 and the harmful 1e-4).
5. Reruns the two best non-preset settings (by validation accuracy) with seeds 1 and 2.
6. Control: 16steps from M1 on oracle-labelled pairs for the same 32 prompts (the correct step
   chosen over a wrong one of the pair; where both were wrong, the oracle's step over the judge's
   choice), lr 1e-5/3e-5/1e-4/1e-3, beta 0.1: do correct preferences at this size help?
7. Every non-preset run with lr <= 3e-5 (picked by lr, not by result) and M1 are also evaluated
   on a 1000-problem confirmation set (`make_problems(1000, ..., id_prefix="confirm")`, disjoint
   from seed 0 and from the validation set), so the best-of-validation choice is re-checked on
   problems it was not chosen on.

Run from the repository root:  .venv/bin/python -m psr.tools.dpo_sweep
(1 torch thread; about 5 minutes of one CPU core. Output: --work/results.json + stdout.)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from psr import config as psr_config
from psr.evaluate import EvalSample, evaluate
from psr.io import read_jsonl
from psr.models import load_model, load_policy, load_tokenizer, set_threads
from psr.policy import Policy
from psr.prompts import Templates
from psr.records import PPDPair
from psr.tasks.benchmarks import BenchmarkItem
from psr.tasks.synthetic import build_task, claim, make_problems, reference_next
from psr.train import boundary_merges, build_dpo_trainer, step_dpo, step_dpo_examples
from psr.engines import HFGenerator

RUN = Path("results/tiny")
M1 = RUN / "psrlm/M1/model"
M1_PAIRS = RUN / "psrlm/M1/02_step_search/ppd.jsonl"
HELDOUT_PAIRS = RUN / "psrlm/M2/02_step_search/ppd.jsonl"  # made by M2 == M1 (checked below)
VAL_SEED, VAL_N = 1000, 300
GRID = [(1e-5, 0.1), (1e-4, 0.1), (1e-3, 0.1), (3e-3, 0.1), (1e-4, 0.5), (1e-3, 0.5)]
EXTRA_LR = 3e-5  # added between 1e-5 and 1e-4 for the schedules that do update (not in the brief's grid)
CONFIRM_N = 1000  # fresh problems to re-check the small-lr settings (no selection on them)
SCHEDULES: dict[str, dict] = {
    "preset": {},
    "warmup0": {"dpo.warmup_ratio": 0.0},
    "16steps": {"dpo.batch_size": 8, "dpo.per_device_batch_size": 8, "dpo.epochs": 4.0},
}
COMPARED_SECTIONS = ("task", "model", "prompts", "dpo", "eval")


@dataclass
class Result:
    name: str
    schedule: str
    lr: float
    beta: float
    seed: int
    pairs: str = "M1 search pairs"
    steps: int = 0
    logged: dict = field(default_factory=dict)  # TRL's last logged train metrics
    post_train: dict = field(default_factory=dict)  # trained vs M1 on the training pairs
    post_heldout: dict = field(default_factory=dict)  # on M2's pairs (M1's own, pool 2)
    post_heldout_oracle: dict = field(default_factory=dict)  # the same, correct step chosen
    rel_weight_change: float = 0.0
    val: dict = field(default_factory=dict)
    confirm: dict = field(default_factory=dict)  # on the 1000-problem confirmation set
    wall_s: float = 0.0


# ----------------------------------------------------------------------------- data


def check_params(params) -> None:
    recorded = json.loads((RUN / "params.json").read_text())["params"]
    now = params.to_dict()
    diff = [s for s in COMPARED_SECTIONS if now[s] != recorded[s]]
    if diff:
        raise SystemExit(f"params/tiny.yaml differs from the reference run in sections {diff}")


def seed0_questions() -> dict[str, set[str]]:
    data = RUN / "data"
    out = {}
    for path in sorted(data.glob("*.jsonl")):
        out[path.stem] = {row["question"] for row in read_jsonl(path)}
    return out


def validation_items(params) -> tuple[list[BenchmarkItem], dict]:
    """300 seed-1000 test problems whose questions occur in no seed-0 split."""
    seen = seed0_questions()
    if "test" not in seen or not any(k.startswith("pool_") for k in seen):
        raise SystemExit(f"{RUN / 'data'} lacks test/pool files")
    every = set().union(*seen.values())
    candidates = build_task(params.task, VAL_SEED).test
    overlap = {name: sum(p.question in qs for p in candidates) for name, qs in seen.items()}
    kept = [p for p in candidates if p.question not in every]
    if len(kept) < VAL_N:
        raise SystemExit(f"only {len(kept)} seed-{VAL_SEED} test problems are disjoint from seed 0")
    kept = kept[:VAL_N]
    assert not any(p.question in every for p in kept)
    info = {
        "source": f"build_task(params.task, seed={VAL_SEED}).test, first {VAL_N} disjoint from seed 0",
        "candidates": len(candidates),
        "overlap_with_seed0_splits": overlap,
        "n": len(kept),
        "ops_histogram": dict(sorted(Counter(p.n_ops for p in kept).items())),
    }
    return [BenchmarkItem(id=p.id, question=p.question, gold=p.gold) for p in kept], info


def confirmation_items(params, exclude: set[str]) -> list[BenchmarkItem]:
    """CONFIRM_N further problems (own RNG stream `psr-synthetic:1000:confirm`, same knobs as the
    test split) that share no question with seed 0 or the validation set."""
    every = set().union(*seed0_questions().values()) | exclude
    t = params.task
    cands = make_problems(VAL_SEED, 2 * CONFIRM_N, t, t.min_steps, t.test_max_steps, id_prefix="confirm")
    kept = [p for p in cands if p.question not in every][:CONFIRM_N]
    if len(kept) < CONFIRM_N:
        raise SystemExit(f"only {len(kept)} confirmation problems are disjoint")
    return [BenchmarkItem(id=p.id, question=p.question, gold=p.gold) for p in kept]


def oracle_labels(pairs: list[PPDPair]) -> Counter:
    """(chosen correct, rejected correct) per pair, by the synthetic task's oracle (local
    correctness: the right next step given the previous steps as written)."""
    out = Counter()
    for p in pairs:
        ref = claim(reference_next(p.question, list(p.previous_steps)))
        out[(claim(p.chosen) == ref, claim(p.rejected) == ref)] += 1
    return out


def oracle_pairs(pairs: list[PPDPair], fill_both_wrong: bool) -> list[PPDPair]:
    """Pairs with exactly one correct step, oriented correct-over-wrong; with `fill_both_wrong`,
    also the pairs where both are wrong, as the oracle's correct step over the chosen one."""
    import dataclasses

    out = []
    for p in pairs:
        ref_step = reference_next(p.question, list(p.previous_steps))
        ref = claim(ref_step)
        c_ok, r_ok = claim(p.chosen) == ref, claim(p.rejected) == ref
        if c_ok and not r_ok:
            out.append(p)
        elif r_ok and not c_ok:
            out.append(dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen, is_final=p.rejected_is_final,
                                           rejected_is_final=p.is_final))
        elif fill_both_wrong and not c_ok and not r_ok:
            out.append(dataclasses.replace(p, chosen=ref_step, rejected=p.chosen, is_final="boxed" in ref_step,
                                           rejected_is_final=p.is_final))
    return out


# ----------------------------------------------------------------------------- measuring


def val_eval(model_dir: Path, items, params, templates, out_path: Path) -> tuple[dict, dict[str, bool]]:

    model, tokenizer = load_policy(model_dir, params.model)
    gen = HFGenerator(model, tokenizer, max_tokens_per_batch=params.search.max_tokens_per_batch)
    if out_path.exists():
        out_path.unlink()
    t0 = time.perf_counter()
    summary = evaluate(
        "synthetic-val", items, Policy(gen, tokenizer, templates), max_new_tokens=params.eval.max_new_tokens,
        out_path=out_path, answer_fallback=params.eval.answer_fallback,
        grading_timeout_s=params.eval.grading_timeout_s, progress=False,
    )
    samples = read_jsonl(out_path, EvalSample)
    n = len(samples)
    out = {
        "accuracy": summary.accuracy,
        "n": summary.n,
        "mean_steps": summary.mean_steps,
        "finished": round(100 * sum(s.extracted is not None for s in samples) / n, 2),
        "eos": round(100 * sum(s.finish_reason == "eos" for s in samples) / n, 2),
        "truncated": summary.truncated,
        "mean_tokens": summary.mean_tokens,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    return out, {s.id: s.correct for s in samples}


def dpo_metrics(params, model_dir: Path, examples: list[dict], work: Path) -> dict:
    """DPO loss / reward margins / accuracies of `model_dir` against M1 on `examples`."""
    from datasets import Dataset

    if not examples:
        return {}
    model, tokenizer = load_policy(model_dir, params.model, trainable=True)
    ref = load_model(M1, params.model, trainable=False)
    trainer = build_dpo_trainer(params, model, tokenizer, examples, work, ref_model=ref, seed=0)
    trainer.args.disable_tqdm = True
    m = trainer.evaluate(eval_dataset=Dataset.from_list(examples))
    keys = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen", "eval_rewards/rejected")
    return {k.removeprefix("eval_"): round(m[k], 5) for k in keys if k in m} | {"n": len(examples)}


def rel_change(model_dir: Path, ref: dict[str, torch.Tensor]) -> float:
    from safetensors.torch import load_file

    w = load_file(str(model_dir / "model.safetensors"))
    num = sum(float((w[k].float() - ref[k].float()).pow(2).sum()) for k in ref)
    den = sum(float(ref[k].float().pow(2).sum()) for k in ref)
    return math.sqrt(num / den)


def last_logged(model_dir: Path) -> tuple[dict, int]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    logs = [h for h in manifest.get("log_history", []) if "loss" in h]
    last = logs[-1] if logs else {}
    keys = ("loss", "rewards/margins", "rewards/accuracies", "learning_rate")
    lrs = [h.get("learning_rate") for h in logs]
    return {k: last.get(k) for k in keys} | {"logged_lrs": lrs}, manifest["metrics"]["global_steps"]


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/dpo_sweep/work"))
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default WORK/results.json)")
    ap.add_argument("--fresh", action="store_true", help="delete WORK first (else finished models are reused)")
    args = ap.parse_args()
    if not (RUN / "params.json").exists():
        raise SystemExit("run from the repository root (results/tiny/params.json not found)")
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    out_json = args.out or args.work / "results.json"

    params = psr_config.load("params/tiny.yaml")
    check_params(params)
    set_threads(1)
    templates = Templates.for_params(params)
    tokenizer = load_tokenizer(RUN / "data/tokenizer", params.model)

    from safetensors.torch import load_file

    m1_w = load_file(str(M1 / "model.safetensors"))
    m2_w = load_file(str(RUN / "psrlm/M2/model/model.safetensors"))
    m2_equals_m1 = all(torch.equal(m1_w[k], m2_w[k]) for k in m1_w)

    items, val_info = validation_items(params)
    confirm_items = confirmation_items(params, {it.question for it in items})
    val_info["confirmation"] = {"n": len(confirm_items), "source": f"make_problems({VAL_SEED}, {2 * CONFIRM_N}, task, "
                                "min_steps, test_max_steps, id_prefix='confirm'), first disjoint from seed 0 and validation"}
    pairs = read_jsonl(M1_PAIRS, PPDPair)
    heldout = read_jsonl(HELDOUT_PAIRS, PPDPair)
    examples = step_dpo_examples(pairs, templates, tokenizer)
    if boundary_merges(examples, tokenizer):
        raise SystemExit("token merges across the prompt/completion boundary")
    heldout_ex = step_dpo_examples(heldout, templates, tokenizer)
    ho_oracle_ex = step_dpo_examples(oracle_pairs(heldout, fill_both_wrong=False), templates, tokenizer)
    oracle_train = oracle_pairs(pairs, fill_both_wrong=True)
    oracle_train_ex = step_dpo_examples(oracle_train, templates, tokenizer)

    report: dict = {
        "validation": val_info,
        "m2_bit_identical_to_m1": m2_equals_m1,
        "pairs": {"train": len(examples), "train_oracle": {str(k): v for k, v in oracle_labels(pairs).items()},
                  "heldout": len(heldout_ex), "heldout_oracle": {str(k): v for k, v in oracle_labels(heldout).items()},
                  "heldout_oracle_oriented": len(ho_oracle_ex), "oracle_control_train": len(oracle_train_ex)},
        "dpo_preset": params.dpo.model_dump(),
        "runs": [],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1), flush=True)

    t0 = time.perf_counter()
    m1_val, m1_correct = val_eval(M1, items, params, templates, args.work / "M1_val.jsonl")
    m1_confirm, m1_confirm_correct = val_eval(M1, confirm_items, params, templates, args.work / "M1_confirm.jsonl")
    report["m1"] = {"val": m1_val, "confirm": m1_confirm,
                    "post_heldout": dpo_metrics(params, M1, heldout_ex, args.work / "_m"),
                    "post_heldout_oracle": dpo_metrics(params, M1, ho_oracle_ex, args.work / "_m")}
    print(f"M1 validation: {m1_val}", flush=True)

    def one(schedule: str, lr: float, beta: float, seed: int, ex: list[dict], pairs_name: str, tag: str = "") -> Result:
        name = f"{schedule}_lr{lr:g}_b{beta:g}_s{seed}{tag}"
        p = params.replace({"dpo.learning_rate": lr, "dpo.beta": beta, **SCHEDULES[schedule]})
        r = Result(name=name, schedule=schedule, lr=lr, beta=beta, seed=seed, pairs=pairs_name)
        t = time.perf_counter()
        out = step_dpo(p, M1, ex, args.work / name / "model", seed=seed)
        r.logged, r.steps = last_logged(out)
        r.rel_weight_change = rel_change(out, m1_w)
        r.post_train = dpo_metrics(p, out, ex, args.work / "_m")
        r.post_heldout = dpo_metrics(p, out, heldout_ex, args.work / "_m")
        r.post_heldout_oracle = dpo_metrics(p, out, ho_oracle_ex, args.work / "_m")
        r.val, correct = val_eval(out, items, params, templates, args.work / name / "val.jsonl")
        r.val["gained"] = sum(correct[i] and not m1_correct[i] for i in correct)
        r.val["lost"] = sum(m1_correct[i] and not correct[i] for i in correct)
        r.wall_s = round(time.perf_counter() - t, 1)
        report["runs"].append(asdict(r))  # progress; rewritten from `runs` at the end
        out_json.write_text(json.dumps(report, indent=1))
        print(f"{name}: steps={r.steps} dW={r.rel_weight_change:.2e} logged={r.logged} post={r.post_train} "
              f"heldout={r.post_heldout} oracle={r.post_heldout_oracle} val={r.val} ({r.wall_s}s)", flush=True)
        return r

    runs = [one(s, lr, beta, 0, examples, "M1 search pairs") for s in SCHEDULES for lr, beta in GRID]
    runs += [one(s, EXTRA_LR, 0.1, 0, examples, "M1 search pairs") for s in SCHEDULES if s != "preset"]
    best = sorted((r for r in runs if r.schedule != "preset"), key=lambda r: -r.val["accuracy"])[:2]
    for r in best:
        for seed in (1, 2):
            runs.append(one(r.schedule, r.lr, r.beta, seed, examples, "M1 search pairs"))
    for lr in (1e-5, 3e-5, 1e-4, 1e-3):
        runs.append(one("16steps", lr, 0.1, 0, oracle_train_ex, "oracle-labelled M1 prompts", tag="_oracle"))
    # the confirmation set, for every non-preset run with lr <= 3e-5 (chosen by lr, not by result)
    for r in runs:
        if r.schedule != "preset" and r.lr <= EXTRA_LR:
            r.confirm, correct = val_eval(args.work / r.name / "model", confirm_items, params, templates,
                                          args.work / r.name / "confirm.jsonl")
            r.confirm["gained"] = sum(correct[i] and not m1_confirm_correct[i] for i in correct)
            r.confirm["lost"] = sum(m1_confirm_correct[i] and not correct[i] for i in correct)
            print(f"{r.name}: confirm={r.confirm}", flush=True)
    report["runs"] = [asdict(r) for r in runs]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    out_json.write_text(json.dumps(report, indent=1))
    print(f"done in {report['wall_s']}s -> {out_json}", flush=True)


if __name__ == "__main__":
    main()
