"""On-policy EFT negatives (`warmup.own_negatives_*`): the second warm-up phase's data holds the
model's own wrong steps where the synthetic corruptions were, in the share asked for, with the
task's judgment; switched off, the warm-up is exactly the one-phase warm-up it was."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

from psr import lineage
from psr.answer_key import SyntheticKey
from psr.config import load
from psr.io import read_jsonl
from psr.own_negatives import OWN_ERROR, Sampling, mix_own_negatives, right_step
from psr.policy import Policy
from psr.prompts import Templates, parse_verdict
from psr.records import EFTRecord
from psr.study import stages
from psr.study.context import Context
from psr.study.data import load_records, m0_tokenizer, prepare_data
from psr.study.layout import layout_for
from psr.tasks.synthetic import claim, final_step, reference_next
from psr.train import sft_inputs
from tests.conftest import EOS_MARK, ScriptedGenerator

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"
KEY = SyntheticKey()
SMALL = ["task.n_ift=20", "task.n_eft=40", "task.n_eft_test=10", "task.n_test=10", "task.n_srlm_eft=10",
         "task.questions_per_iteration=[5, 5, 5]"]
SAMPLING = Sampling(n=4, temperature=0.7, top_p=0.95, max_new_tokens=32)


def wrong_of(question: str, steps: list[str]) -> str:
    """A step whose claim is off by 100 from the reference next step (a model's mistake)."""
    expected = reference_next(question, steps)
    value = int(claim(expected).removeprefix("answer ")) + 100
    return final_step(value) if "boxed" in expected else f"{expected.rsplit('=', 1)[0]}= {value}"


def model(kind: str):
    """A scripted M1a: `mixed` writes one right and then wrong steps, `right` only right ones,
    `early_eos` the right equation ended by EOS at a non-final step (wrong by the key, but
    indistinguishable in text) plus the right step."""
    def policy(q, steps, n, seed, visit):
        right = reference_next(q, steps)
        if kind == "right":
            texts = [right] * n
        elif kind == "first_step_only":  # errs at the first step alone
            texts = [right] + [wrong_of(q, steps) if not steps else right] * (n - 1)
        elif kind == "early_eos":
            texts = [right + EOS_MARK if "boxed" not in right else right] + [right] * (n - 1)
        else:
            texts = [right] + [wrong_of(q, steps)] * (n - 1)
        return [f"Step {len(steps) + 1}: {t}" for t in texts]
    return ScriptedGenerator(policy=policy)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    params = load(TINY, [f"run.results_dir={tmp_path_factory.mktemp('runs')}", *SMALL])
    layout = layout_for(params, 0)
    data = prepare_data(params, layout, log=lambda *a: None)
    return params, layout, load_records(data, "eft", EFTRecord), m0_tokenizer(params, layout)


def policy_of(generator, tok) -> Policy:
    return Policy(generator, tok, Templates.for_params(load(TINY)))


def test_the_share_asked_for_gets_the_models_own_wrong_steps(run):
    _, _, eft, tok = run
    mixed, own = mix_own_negatives(eft, policy_of(model("mixed"), tok), KEY, SAMPLING, share=0.5, seed=0)
    changed = [i for i, (a, b) in enumerate(zip(eft, mixed)) if a != b]
    assert len(own) == len(changed) == 20 and len(mixed) == len(eft)
    assert [mixed[i] for i in changed] == own and all(r.error == OWN_ERROR for r in own)
    for i in changed:
        old, new = eft[i], mixed[i]
        assert (new.id, new.question, new.previous_steps, new.verdict) == (old.id, old.question, old.previous_steps, old.verdict)
        assert right_step(new) == right_step(old)
        wrong = new.step_b if new.verdict == "A" else new.step_a
        assert wrong == wrong_of(new.question, new.previous_steps)  # the sample, marker stripped
        assert not KEY.step_right(new.question, new.previous_steps, wrong, "boxed" in wrong)
        assert parse_verdict(new.judgment) == new.verdict and new.judgment.endswith(f"[[{new.verdict}]]")
    # both verdict slots stay in use, as in the task's EFT
    assert {r.verdict for r in own} == {"A", "B"}
    # the same seed picks the same records and samples the same steps
    assert mix_own_negatives(eft, policy_of(model("mixed"), tok), KEY, SAMPLING, share=0.5, seed=0) == (mixed, own)


def test_the_replaced_records_come_from_the_prefixes_the_model_got_wrong(run):
    _, _, eft, tok = run
    errs = [i for i, r in enumerate(eft) if not r.previous_steps]
    assert 5 < len(errs) < 20  # fewer than the share asks for
    mixed, own = mix_own_negatives(eft, policy_of(model("first_step_only"), tok), KEY, SAMPLING, share=0.5, seed=0)
    assert [i for i, (a, b) in enumerate(zip(eft, mixed)) if a != b] == errs and len(own) == len(errs)
    mixed, own = mix_own_negatives(eft, policy_of(model("first_step_only"), tok), KEY, SAMPLING, share=0.1, seed=0)
    changed = [i for i, (a, b) in enumerate(zip(eft, mixed)) if a != b]
    assert len(changed) == 4 and set(changed) <= set(errs)


def test_a_prefix_without_a_usable_wrong_sample_keeps_its_record(run):
    _, _, eft, tok = run
    for kind in ("right", "early_eos"):
        assert mix_own_negatives(eft, policy_of(model(kind), tok), KEY, SAMPLING, share=1.0, seed=0) == (eft, [])


def test_share_zero_samples_nothing(run):
    _, _, eft, tok = run
    generator = model("mixed")
    assert mix_own_negatives(eft, policy_of(generator, tok), KEY, SAMPLING, share=0.0, seed=0) == (eft, [])
    assert generator.calls == []


def test_off_by_default_and_phase_two_inputs_differ_from_one_phase(run):
    params, *_ = run
    assert load(TINY).warmup.own_negatives_steps == 0
    examples = [{"prompt": "p", "completion": "c"}]
    one = sft_inputs(params, examples, base=None, seed=0)
    assert "phase2" not in one
    # the second phase's settings are not part of phase 1: phase 1 is the one-phase M1
    other = params.replace({"warmup.own_negatives_steps": 500, "warmup.own_negatives_share": 0.25})
    assert sft_inputs(other, examples, base=None, seed=0) == one
    assert sft_inputs(params, examples, base=None, seed=0, phase2={"steps": 500}) != one


class FakeTraining:
    """`warmup_sft` that records its calls and publishes a manifest with its inputs (no training)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, params, examples, out_dir, *, base=None, tokenizer=None, seed=0, sources=None,
                 callbacks=None, shipped=None, phase2=None):
        inputs = sft_inputs(params, examples, base=base, tokenizer=tokenizer, seed=seed, sources=sources, phase2=phase2)
        self.calls.append({"out": Path(out_dir), "base": base, "examples": list(examples), "inputs": inputs,
                           "max_steps": params.warmup.max_steps, "shipped": shipped})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        lineage.write_manifest(out_dir, stage="warmup_sft", inputs=inputs, metrics={})
        return Path(out_dir)


def warm_up(params, layout, monkeypatch, tok, arm="psrlm") -> tuple[FakeTraining, dict]:
    training = FakeTraining()
    monkeypatch.setattr(stages, "warmup_sft", training)

    @contextmanager
    def scripted(ctx, model_dir=None, **kw):
        assert model_dir == ctx.stage_dir("01_warmup_sft") / stages.M1A  # M1a writes the negatives
        yield policy_of(model("mixed"), tok)

    monkeypatch.setattr(stages, "policy_for", scripted)
    summary = stages.warmup_stage(Context(params=params, layout=layout, arm=arm, k=1, seed=0))
    return training, summary


def test_switched_off_the_warm_up_is_one_phase_into_m1(run, monkeypatch, tmp_path):
    params, _, eft, tok = run
    params = params.replace({"run.results_dir": str(tmp_path)})
    layout = layout_for(params, 0)
    training, summary = warm_up(params, layout, monkeypatch, tok)
    assert [c["out"] for c in training.calls] == [layout.model_dir("psrlm", 1)]
    assert "phase2" not in training.calls[0]["inputs"] and "phase2" not in summary
    assert not (layout.stage_dir("psrlm", 1, "01_warmup_sft") / stages.OWN_NEGATIVES).exists()


def test_phase_two_continues_from_m1a_on_the_mixed_eft(run, monkeypatch, tmp_path):
    params, _, eft, tok = run
    params = params.replace({"run.results_dir": str(tmp_path), "warmup.own_negatives_steps": 7})
    layout = layout_for(params, 0)
    training, summary = warm_up(params, layout, monkeypatch, tok)
    stage = layout.stage_dir("psrlm", 1, "01_warmup_sft")
    first, second = training.calls
    assert first["out"] == stage / stages.M1A and first["base"] is None and "phase2" not in first["inputs"]
    assert second["out"] == layout.model_dir("psrlm", 1) and second["base"] == stage / stages.M1A
    assert second["max_steps"] == 7 and second["shipped"] is None
    assert second["inputs"]["phase2"]["steps"] == 7 and second["inputs"]["base"].startswith("manifest:")
    own = read_jsonl(stage / stages.OWN_NEGATIVES, EFTRecord)
    assert len(own) == summary["phase2"]["replaced"] == 20 and "own_negatives" in second["inputs"]["data_files"]
    # the same IFT, and EFT records of which the on-policy ones replaced their synthetic twins
    assert len(second["examples"]) == len(first["examples"])
    changed = [(a, b) for a, b in zip(first["examples"], second["examples"]) if a != b]
    assert len(changed) == len(own)
    assert all(wrong_of(r.question, r.previous_steps) in b["prompt"] for r, (_, b) in zip(own, changed))
    assert summary["model"] == str(layout.model_dir("psrlm", 1))


def test_the_srlm_arm_continues_as_long_on_its_own_data(run, monkeypatch, tmp_path):
    params, _, _, tok = run
    params = params.replace({"run.results_dir": str(tmp_path), "warmup.own_negatives_steps": 7})
    layout = layout_for(params, 0)
    training, summary = warm_up(params, layout, monkeypatch, tok, arm="srlm")
    first, second = training.calls
    assert second["examples"] == first["examples"] and second["max_steps"] == 7
    assert second["base"] == layout.stage_dir("srlm", 1, "01_warmup_sft") / stages.M1A
    assert "replaced" not in summary["phase2"]
