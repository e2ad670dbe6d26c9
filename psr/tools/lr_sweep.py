"""Do the paper's learning rates move a LoRA adapter? Warm-up SFT and step-DPO on SmolLM2-135M
(the `smol` preset's model, CPU) at the paper's full-fine-tuning rates and at LoRA-sized ones.

The paper tuned every weight (warm-up lr 1e-6, step-DPO lr 5e-7). A LoRA adapter starts with
B = 0, so its first updates are what moves the model at all; the question is whether those rates
move it within a run. Everything except the model size is the 7B QLoRA preset's choice: LoRA
r 64 / alpha 128 / dropout 0.05 on all linear layers (plain LoRA, not 4-bit, on CPU), cosine
schedules with its warm-up ratios, DPO beta 0.4. Training goes through the study's own code
(`psr.train.build_sft_trainer` / `build_dpo_trainer`, the smol preset's prompts and chat
template); runs are short (`--sft-steps`, `--dpo-steps` optimizer steps) to fit a shared CPU.

Data (no gold answer is needed beyond the files):
- warm-up: the smol preset's mix, IFT (GSM8K train solutions, rule-segmented into `Step n:` steps)
  and EFT (PRM800K-format step pairs, template judgments); held out: IFT solutions of other
  questions. Measured: the training loss on the first and the last batch (every run sees the same
  batches in the same order, so the last-batch losses compare across rates), the held-out completion
  loss and next-token accuracy (TRL's `mean_token_accuracy`), and how far the adapter moved the
  weights (||scale * B @ A|| / ||W|| over the adapted layers).
- step-DPO: step pairs from GSM8K solutions: the solution's own step is chosen, the same step with
  its last number changed is rejected (a wrong result, the kind of flaw a step judge should
  catch); held out: pairs from other questions. Measured: the training loss, the DPO reward
  margin and the reward accuracy (share of pairs whose chosen step gains more log-probability
  than the rejected one) on the held-out pairs, against the base model as reference.

Run from the repository root (one torch thread):
    python -m psr.tools.lr_sweep --gsm8k $PSR_DATASET_DIR/gsm8k/train.jsonl --out results/lr-sweep
Without `--gsm8k` the smol fixture's 16 GSM8K rows are used (too few for a meaningful held-out
slice). Writes `results.json` and `table.md` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset

from psr.config import Params, load
from psr.models import load_model, load_policy, set_threads
from psr.prompts import Templates
from psr.records import IFTRecord, PPDPair
from psr.steps import is_final
from psr.tasks.eft import build_eft, read_prm_solutions
from psr.tasks.ift import build_ift
from psr.tasks.sources import Source
from psr.tools.smol import ensure_smol
from psr.train import (
    build_dpo_trainer,
    build_sft_trainer,
    dpo_args,
    sft_args,
    sft_examples,
    step_dpo_examples,
)
from psr.train.adapters import prepare_adapter

ROOT = Path(__file__).resolve().parents[2]
SMOL_PRESET = ROOT / "params" / "smol.yaml"
LORA_PRESET = ROOT / "params" / "qwen2.5-math-7b.yaml"
FIXTURE_GSM8K = ROOT / "tests" / "fixtures" / "smol" / "gsm8k_train.jsonl"
FIXTURE_PRM = ROOT / "tests" / "fixtures" / "smol" / "prm800k.jsonl"
SFT_RATES = (1e-6, 1e-4, 2e-4)  # the paper's warm-up rate, then LoRA-sized ones
DPO_RATES = (5e-7, 5e-6, 2e-5)  # the paper's step-DPO rate, then LoRA-sized ones
PAPER = {"sft": 1e-6, "dpo": 5e-7}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def sweep_params(sft_steps: int, dpo_steps: int, batch: int) -> Params:
    """The smol preset with the 7B preset's adapter, schedules and beta; short runs."""
    lora = load(LORA_PRESET)
    p = load(SMOL_PRESET)
    return p.replace({
        "model.lora.r": lora.model.lora.r, "model.lora.alpha": lora.model.lora.alpha,
        "model.lora.dropout": lora.model.lora.dropout, "model.adapter": "lora",
        "model.gradient_checkpointing": False,
        "warmup.lr_scheduler": lora.warmup.lr_scheduler, "warmup.warmup_ratio": lora.warmup.warmup_ratio,
        "warmup.max_steps": sft_steps, "warmup.batch_size": batch, "warmup.per_device_batch_size": batch,
        "dpo.lr_scheduler": lora.dpo.lr_scheduler, "dpo.warmup_ratio": lora.dpo.warmup_ratio,
        "dpo.beta": lora.dpo.beta, "dpo.max_steps": dpo_steps, "dpo.batch_size": batch,
        "dpo.per_device_batch_size": batch,
    })


# ----------------------------------------------------------------------------- data


def corrupt_last_number(step: str, rng: random.Random) -> str | None:
    """The step with its last number changed (a wrong result), or None when it has no number."""
    found = list(_NUMBER.finditer(step))
    if not found:
        return None
    m = found[-1]
    value = float(m.group())
    new = value + rng.choice([-3, -2, -1, 1, 2, 3, 10]) if value >= 4 else value + rng.choice([1, 2, 3])
    text = f"{new:g}" if "." in m.group() else str(int(new))
    return step[: m.start()] + text + step[m.end():]


def step_pairs(records: list[IFTRecord], rng: random.Random) -> list[PPDPair]:
    """One pair per solution: a step with a number, chosen as written, rejected with its last
    number changed; the earlier steps are the context."""
    pairs = []
    for r in records:
        candidates = [k for k, s in enumerate(r.steps) if _NUMBER.search(s)]
        if not candidates:
            continue
        k = rng.choice(candidates)
        rejected = corrupt_last_number(r.steps[k], rng)
        if rejected is None or rejected == r.steps[k]:
            continue
        pairs.append(PPDPair(id=f"{r.id}#{k + 1}", question=r.question, previous_steps=list(r.steps[:k]),
                             chosen=r.steps[k], rejected=rejected, is_final=is_final(r.steps[k]), scores=[],
                             iteration=0, rejected_is_final=is_final(rejected)))
    return pairs


def build_data(params: Params, gsm8k: Path, n_train: int, n_heldout: int, tokenizer, templates) -> dict:
    ift = build_ift(Source(str(gsm8k)), 2 * n_train + 2 * n_heldout, seed=0)
    sft_ift, dpo_ift = ift[:n_train], ift[n_train:2 * n_train]
    heldout_ift = ift[2 * n_train:2 * n_train + n_heldout]
    dpo_heldout_ift = ift[2 * n_train + n_heldout:]
    prm = read_prm_solutions(Source(str(FIXTURE_PRM)))
    eft, _, _ = build_eft(prm, n_train=4, n_test=0, seed=0)
    rng = random.Random(0)
    return {
        "sft_train": sft_examples(sft_ift, eft, templates, tokenizer),
        "sft_heldout": sft_examples(heldout_ift, [], templates, tokenizer),
        "dpo_train": step_dpo_examples(step_pairs(dpo_ift, rng), templates, tokenizer),
        "dpo_heldout": step_dpo_examples(step_pairs(dpo_heldout_ift, rng), templates, tokenizer),
    }


# ----------------------------------------------------------------------------- measuring


def lora_shift(model) -> float:
    """||scale * B @ A||_F / ||W||_F over every adapted layer (0 while B is still zero)."""
    num = den = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            delta = module.scaling["default"] * (b @ a)
            num += float(delta.pow(2).sum())
            den += float(module.base_layer.weight.pow(2).sum())
    return math.sqrt(num / den) if den else 0.0


def _train_losses(trainer) -> tuple[float | None, float | None]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return (losses[0], losses[-1]) if losses else (None, None)


def _evaluate(trainer) -> dict:
    with torch.no_grad():
        return trainer.evaluate(eval_dataset=trainer.train_dataset)


def sft_run(params: Params, lr: float | None, data: dict, work: Path, seed: int = 0) -> dict:
    """Warm-up SFT at `lr` (None: the untrained adapter, for the baseline), then held-out metrics."""
    t0 = time.perf_counter()
    p = params.replace({"warmup.learning_rate": lr or PAPER["sft"]})
    model, tok = load_policy("smol", p.model, trainable=True)
    model, peft_config = prepare_adapter(model, p)
    trainer = build_sft_trainer(p, model, tok, data["sft_train"], work, peft_config=peft_config, seed=seed,
                                args=sft_args(p, len(data["sft_train"]), work, seed=seed))
    trainer.args.disable_tqdm = True
    first = last = None
    if lr is not None:
        trainer.train()
        first, last = _train_losses(trainer)
    trained = trainer.model
    held = build_sft_trainer(p, trained, tok, data["sft_heldout"], work / "eval",
                             args=sft_args(p, len(data["sft_heldout"]), work / "eval", seed=seed))
    held.args.disable_tqdm = True
    m = _evaluate(held)
    return {"stage": "warmup", "lr": lr, "steps": p.warmup.max_steps if lr is not None else 0,
            "train_loss_first": first, "train_loss_last": last, "heldout_loss": m["eval_loss"],
            "heldout_token_accuracy": m.get("eval_mean_token_accuracy"), "weight_shift": lora_shift(trained),
            "wall_s": round(time.perf_counter() - t0, 1)}


def dpo_run(params: Params, lr: float | None, data: dict, work: Path, seed: int = 0) -> dict:
    """Step-DPO at `lr` from the base model (reference: the base, i.e. the adapter switched off),
    then DPO metrics on the held-out pairs."""
    t0 = time.perf_counter()
    p = params.replace({"dpo.learning_rate": lr or PAPER["dpo"]})
    model, tok = load_policy("smol", p.model, trainable=True)
    model, peft_config = prepare_adapter(model, p)
    trainer = build_dpo_trainer(p, model, tok, data["dpo_train"], work, peft_config=peft_config, seed=seed,
                                args=dpo_args(p, len(data["dpo_train"]), work, seed=seed))
    trainer.args.disable_tqdm = True
    first = last = None
    if lr is not None:
        trainer.train()
        first, last = _train_losses(trainer)
    trained = trainer.model
    # the base as an explicit reference: given the trained adapter alone, TRL would copy it as the
    # reference and every margin would be 0
    base = load_model("smol", p.model, trainable=False)
    held = build_dpo_trainer(p, trained, tok, data["dpo_heldout"], work / "eval", ref_model=base,
                             args=dpo_args(p, len(data["dpo_heldout"]), work / "eval", seed=seed))
    held.args.disable_tqdm = True
    m = _evaluate(held)
    return {"stage": "step-dpo", "lr": lr, "steps": p.dpo.max_steps if lr is not None else 0,
            "train_loss_first": first, "train_loss_last": last, "heldout_loss": m["eval_loss"],
            "heldout_margin": m.get("eval_rewards/margins"), "heldout_reward_accuracy": m.get("eval_rewards/accuracies"),
            "weight_shift": lora_shift(trained), "wall_s": round(time.perf_counter() - t0, 1)}


def _cell(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    lines = ["| stage | lr | steps | train loss first → last | held-out loss | held-out token acc. / reward acc. "
             "| held-out reward margin | weight shift |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = "untrained" if r["lr"] is None else f"{r['lr']:g}" + (" (paper)" if r["lr"] == PAPER.get(
            "sft" if r["stage"] == "warmup" else "dpo") else "")
        acc = r.get("heldout_token_accuracy") if r["stage"] == "warmup" else r.get("heldout_reward_accuracy")
        lines.append(f"| {r['stage']} | {lr} | {r['steps']} | {_cell(r['train_loss_first'], '.4f')} → "
                     f"{_cell(r['train_loss_last'], '.4f')} | {r['heldout_loss']:.4f} | {_cell(acc, '.3f')} | "
                     f"{_cell(r.get('heldout_margin'), '.4f')} | {r['weight_shift']:.2e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gsm8k", type=Path, default=FIXTURE_GSM8K, help="GSM8K train JSON lines")
    ap.add_argument("--out", type=Path, default=Path("results/lr-sweep"))
    ap.add_argument("--n-train", type=int, default=32, help="solutions for SFT (and as many for DPO pairs)")
    ap.add_argument("--n-heldout", type=int, default=16, help="held-out solutions (SFT) and pairs (DPO)")
    ap.add_argument("--sft-steps", type=int, default=12)
    ap.add_argument("--dpo-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sft-rates", type=float, nargs="*", default=list(SFT_RATES))
    ap.add_argument("--dpo-rates", type=float, nargs="*", default=list(DPO_RATES))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    set_threads(1)
    ensure_smol()
    params = sweep_params(args.sft_steps, args.dpo_steps, args.batch)
    templates = Templates.for_params(params)
    _, tok = load_policy("smol", params.model)
    data = build_data(params, args.gsm8k, args.n_train, args.n_heldout, tok, templates)
    sizes = {k: len(v) for k, v in data.items()}
    print(f"data: {sizes}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="psr-lr-sweep-") as tmp:
        runs = [(sft_run, lr) for lr in [None, *args.sft_rates]] + [(dpo_run, lr) for lr in [None, *args.dpo_rates]]
        for i, (run, lr) in enumerate(runs):
            rows.append(run(params, lr, data, Path(tmp) / f"run{i}"))
            print(json.dumps(rows[-1]), flush=True)
            (args.out / "results.json").write_text(json.dumps(
                {"command": "python -m psr.tools.lr_sweep " + " ".join(argv), "data": sizes,
                 "gsm8k": str(args.gsm8k), "params": {k: params.to_dict()[k] for k in ("model", "warmup", "dpo")},
                 "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
