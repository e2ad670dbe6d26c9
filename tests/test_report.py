"""metrics.json from stage summaries (one seed as the stages wrote it; several seeds aggregate only
measurements), the verified arm's shared M1, M0 shared by every arm, last-minus-first per seed, the
pair diagnostics, the test-time search beside greedy decoding, the report tables and figures, and
the README results block generated from metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from psr.cli import main
from psr.config import load
from psr.io import read_json, write_json
from psr.study.graph import plan
from psr.study.layout import DIAGNOSTICS, PREFERENCE_STAGE, TEST_TIME_STAGE, layout_for
from psr.study.report import (
    README_BEGIN,
    README_END,
    collect_metrics,
    is_measurement,
    readme_block,
    report_run,
    update_readme,
    write_report,
)

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"
ARM_OFFSET = {"psrlm": 0.0, "srlm": 100.0, "verified": 200.0}


def accuracy(arm: str, k: int, seed: int) -> float:
    """The fake runs' accuracy: the verified arm's M1 is psrlm's, so it has no value of its own."""
    return ARM_OFFSET[arm] + 10.0 * k + seed * k


def fake_run(tmp_path, seeds, code=None):
    """Write the summaries a finished run would hold (accuracy from `accuracy`), with diagnostics
    beside each preference stage and a params.json with a code record."""
    params = load(TINY, [f"run.results_dir={tmp_path}", f"run.seeds={list(seeds)}", "run.iterations=2",
                         "run.name=r"])
    write_json(tmp_path / "r" / "params.json", {"params": params.to_dict(), "code": code or {
        "commit": "0123456789abcdef0123", "committed": "2026-01-02T03:04:05+00:00", "dirty": False}})
    for seed in seeds:
        layout = layout_for(params, seed)
        for arm in params.run.arms:
            for stage, k in plan(params, arm):
                d = layout.stage_dir(arm, k, stage)
                d.mkdir(parents=True, exist_ok=True)
                write_json(layout.marker_path(arm, k, stage), {"key": f"key-{arm}-{k}", "wall_s": 1.5 + seed,
                                                               "stage": stage, "k": k})
                if stage == "05_evaluate":
                    write_json(d / "summary.json", {"synthetic": {"benchmark": "synthetic", "n": 100,
                               "accuracy": accuracy(arm, k, seed), "mean_steps": 3.0, "mean_step_tokens": 7.0,
                               "mean_tokens": 30.0, "truncated": 0}})
                elif stage == "03_judging":
                    shots = {"shots": 3, "shot_ids": ["e0", "e3", "e1"]} if k == 0 else {}  # M0, few-shot
                    write_json(d / "summary.json", {"n": 50, "accuracy": 60.0 + seed, "position_consistency": 40.0,
                                                    "parse_rate": 100.0, **shots})
                elif stage == TEST_TIME_STAGE:
                    write_json(d / "summary.json", {"synthetic": {"n": 50, "greedy": {
                        "benchmark": "synthetic", "n": 50, "accuracy": accuracy(arm, k, seed), "mean_steps": 3.0,
                        "mean_step_tokens": 7.0, "mean_tokens": 30.0, "truncated": 0}, "search": {
                        "benchmark": "synthetic", "n": 50, "accuracy": accuracy(arm, k, seed) + 5.0, "mean_tokens": 900.0,
                        "mean_candidate_tokens": 500.0, "mean_judge_tokens": 400.0, "mean_expansions": 8.0,
                        "mean_steps": 3.0, "finished_rate": 90.0 + seed}}})
                elif stage == "02_step_search":
                    write_json(d / "summary.json", {"questions": 10, "pairs": 20 + seed})
                    write_json(d / DIAGNOSTICS, {"n": 20 + seed, "right_over_wrong": 50.0 + seed, "both_right": 10.0,
                                                 "both_wrong": 30.0, "inverted": 10.0 - seed,
                                                 "own_scores": {"n": 40, "accuracy": 55.0, "tied": 5.0},
                                                 "stage_key": f"key-{arm}-{k}", "version": 1})
                elif stage == "04_step_dpo":
                    write_json(d / "summary.json", {"model": str(layout.model_dir(arm, k + 1)), "pairs": 20 + seed,
                               "train": {"gradient_accumulation_steps": 1, "inputs": {"seed": seed},
                                         "metrics": {"train_loss": 0.6 + seed / 10}}, "wall_s": 2.0})
    return params


def test_one_seed_keeps_values(tmp_path):
    m = collect_metrics(fake_run(tmp_path, [0]))
    cell = m["arms"]["psrlm"]["M2"]
    assert cell["eval"]["synthetic"]["accuracy"] == 20.0 and cell["eval"]["synthetic"]["n"] == 100
    assert cell["judge"]["accuracy"] == 60.0 and cell["search"]["pairs"] == 20
    assert cell["wall_s"]["05_evaluate"] == 1.5
    assert cell["dpo"]["train"] == {"gradient_accumulation_steps": 1, "inputs": {"seed": 0}, "metrics": {"train_loss": 0.6}}
    assert cell["pairs"]["right_over_wrong"] == 50.0 and "stage_key" not in cell["pairs"]
    assert set(m["arms"]["srlm"]) == {"M0", "M1", "M2", "M3"}
    assert m["code"]["commit"] == "0123456789abcdef0123"
    assert cell["test_time"]["synthetic"]["search"]["accuracy"] == 25.0 and cell["wall_s"][TEST_TIME_STAGE] == 1.5


def test_the_verified_arms_m1_is_psrlms_model_and_its_own_stages_are_its_own(tmp_path):
    m = collect_metrics(fake_run(tmp_path, [0]))
    verified, psrlm = m["arms"]["verified"], m["arms"]["psrlm"]
    assert verified["M1"]["same_model_as"] == "psrlm"
    assert verified["M1"]["eval"] == psrlm["M1"]["eval"] and verified["M1"]["judge"] == psrlm["M1"]["judge"]
    assert verified["M1"]["wall_s"] == {"02_step_search": 1.5, "04_step_dpo": 1.5}  # not psrlm's stages
    assert verified["M2"]["eval"]["synthetic"]["accuracy"] == 220.0 and "judge" not in verified["M2"]
    assert "same_model_as" not in verified["M2"] and "pairs" in verified["M1"]
    assert m["gains"]["verified"]["synthetic"]["per_seed"] == [230.0 - 10.0]  # from psrlm's M1


def test_m0_is_judged_and_evaluated_once_and_shown_for_every_arm_beside_the_loops_models(tmp_path):
    m = collect_metrics(fake_run(tmp_path, [0]))
    psrlm, srlm, verified = (m["arms"][a] for a in ("psrlm", "srlm", "verified"))
    assert psrlm["M0"]["eval"]["synthetic"]["accuracy"] == 0.0 and psrlm["M0"]["judge"]["shots"] == 3
    assert "same_model_as" not in psrlm["M0"] and set(psrlm["M0"]["wall_s"]) == {"03_judging", "05_evaluate"}
    for other in (srlm, verified):
        assert other["M0"]["same_model_as"] == "psrlm" and other["M0"]["wall_s"] == {}
        assert other["M0"]["eval"] == psrlm["M0"]["eval"] and other["M0"]["judge"] == psrlm["M0"]["judge"]
    assert "shots" not in psrlm["M1"]["judge"]  # M1 on are judged zero-shot
    assert m["gains"]["psrlm"]["synthetic"]["from"] == "M1"  # the loop's gain starts at its first model
    write_report(fake_run(tmp_path, [0]))
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| PSRLM-M0 | 0.0 |" in report and "| SRLM-M0 (= PSRLM-M0) | 0.0 |" in report
    assert "| M0 (3-shot) | 60.0 | 40.0 | 100.0 | 60.0 | 40.0 | 100.0 |" in report and "| M1 | 60.0 |" in report
    assert "| psrlm | synthetic | +20.0 | +20.0 |" in report  # M3 - M1, not M3 - M0


def test_a_run_made_before_m0_was_evaluated_has_no_m0_row(tmp_path):
    params = fake_run(tmp_path, [0])
    layout = layout_for(params, 0)
    for stage in ("03_judging", "05_evaluate"):
        (layout.stage_dir("psrlm", 0, stage) / "summary.json").unlink()
        layout.marker_path("psrlm", 0, stage).unlink()
    m = write_report(params)
    assert all("M0" not in data for data in m["arms"].values())
    assert "-M0 |" not in (tmp_path / "r" / "report.md").read_text()


def test_the_test_time_table_puts_the_search_beside_greedy_decoding_on_the_same_problems(tmp_path):
    metrics = write_report(fake_run(tmp_path, [0, 1]))
    t = metrics["arms"]["psrlm"]["M2"]["test_time"]["synthetic"]
    assert t["search"]["accuracy"] == {"mean": 26.0, "sd": 1.414, "per_seed": [25.0, 27.0]}
    assert t["n"] == 50 and t["search"]["n"] == 50 and t["search"]["benchmark"] == "synthetic"  # settings stay
    assert "test_time" not in metrics["arms"]["srlm"]["M2"] and "test_time" not in metrics["arms"]["psrlm"]["M0"]
    report = (tmp_path / "r" / "report.md").read_text()
    table = report.split("(paper Table 5 layout)")[1].split("## Pair diagnostics")[0]
    assert "| PSRLM-M2 | greedy | 21.0 ± 1.4 (50) | 30 |" in table
    assert "| PSRLM-M2 | step search | 26.0 ± 1.4 (50) | 900 |" in table
    assert "| SRLM-" not in table and "-M0 |" not in table
    assert (tmp_path / "r" / "test_time_by_iteration.png").stat().st_size > 1000
    assert "| PSRLM-M3 | step search |" in readme_block(metrics, "r/metrics.json")


def test_a_run_without_the_test_time_search_says_so(tmp_path):
    params = fake_run(tmp_path, [0])
    write_report(params.replace({"test_time.problems": 0}))
    assert "(no test-time search in this run" in (tmp_path / "r" / "report.md").read_text()


def test_several_seeds_aggregate_measurements_and_keep_settings(tmp_path):
    params = fake_run(tmp_path, [0, 1, 2])
    metrics = write_report(params)
    cell = metrics["arms"]["psrlm"]["M3"]
    assert cell["eval"]["synthetic"]["accuracy"] == {"mean": 33.0, "sd": 3.0, "per_seed": [30.0, 33.0, 36.0]}
    assert cell["eval"]["synthetic"]["n"] == 100  # a setting all seeds share
    assert metrics["arms"]["psrlm"]["M1"]["judge"]["accuracy"]["mean"] == 61.0
    dpo = metrics["arms"]["psrlm"]["M1"]["dpo"]
    assert dpo["train"]["gradient_accumulation_steps"] == 1  # not averaged
    assert dpo["train"]["inputs"]["seed"] == {"per_seed": [0, 1, 2]}  # an identifier: per seed, never 1.0
    assert dpo["train"]["metrics"]["train_loss"]["mean"] == pytest.approx(0.7)
    assert dpo["model"] == {"per_seed": [str(layout_for(params, s).model_dir("psrlm", 2)) for s in (0, 1, 2)]}
    assert metrics["arms"]["psrlm"]["M1"]["pairs"]["inverted"] == {"mean": 9.0, "sd": 1.0, "per_seed": [10.0, 9.0, 8.0]}
    assert metrics["gains"]["psrlm"]["synthetic"] == {"from": "M1", "to": "M3", "mean": 22.0, "sd": 2.0,
                                                       "per_seed": [20.0, 22.0, 24.0]}
    root = tmp_path / "r"
    assert json.loads((root / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    report = (root / "report.md").read_text()
    assert "| PSRLM-M3 | 33.0 ± 3.0 |" in report and "mean ± sd" in report
    assert "| VERIFIED-M1 (= PSRLM-M1) | 11.0 ± 1.0 |" in report
    assert "| psrlm | synthetic | +20.0, +22.0, +24.0 | +22.0 ± 2.0 |" in report
    assert "| psrlm | M1 | 21.0 ± 1.0 | 51.0 ± 1.0 | 10.0 ± 0.0 | 30.0 ± 0.0 | 9.0 ± 1.0 | – | 55.0 ± 0.0 (n 40) | – |" in report
    assert "commit `0123456789ab`" in report
    assert "VERIFIED accuracy" not in report  # its one judged model is psrlm's M1
    for fig in ("accuracy_by_iteration.png", "judge_by_iteration.png", "steps_by_iteration.png", "pairs_by_iteration.png",
                "test_time_by_iteration.png"):
        assert (root / fig).stat().st_size > 1000


def test_measurements_are_named_by_path():
    assert is_measurement(("eval", "gsm8k", "accuracy")) and is_measurement(("pairs", "own_scores", "accuracy"))
    assert is_measurement(("dpo", "train", "metrics", "train_loss")) and is_measurement(("wall_s", "05_evaluate"))
    assert is_measurement(("test_time", "gsm8k", "search", "mean_tokens")) and not is_measurement(("test_time", "gsm8k", "n"))
    assert not is_measurement(("eval", "gsm8k", "n")) and not is_measurement(("dpo", "train", "inputs", "seed"))
    assert not is_measurement(("dpo", "train", "gradient_accumulation_steps")) and not is_measurement(("search", "questions"))


README = """# Project

Prose the generator never touches.

{begin}
| old | hand-copied | table |
{end}

More prose.
"""


def test_the_readme_block_is_generated_from_metrics_and_rewritten_idempotently(tmp_path):
    fake_run(tmp_path, [0, 1])
    metrics = write_report(load(tmp_path / "r" / "params.json"))
    readme = tmp_path / "README.md"
    readme.write_text(README.format(begin=README_BEGIN, end=README_END))
    report_run(tmp_path / "r", readme)
    text = readme.read_text()
    assert "hand-copied" not in text and text.startswith("# Project\n\nProse") and text.endswith("\nMore prose.\n")
    block = text.split(README_BEGIN + "\n")[1].split("\n" + README_END)[0]
    assert block == readme_block(metrics, "r/metrics.json")
    assert "Generated from `r/metrics.json` (run `r`, seeds [0, 1])" in block
    assert "commit `0123456789ab` (2026-01-02T03:04:05+00:00; clean working tree)" in block
    assert "`git log 0123456789ab..HEAD`" in block
    assert "| PSRLM-M2 | 21.0 ± 1.4 |" in block and "| psrlm | synthetic | +20.0, +22.0 | +21.0 ± 1.4 |" in block
    assert "| verified | M2 |" in block  # pair diagnostics of every arm
    once = readme.read_bytes()
    assert update_readme(readme, block) is False
    report_run(tmp_path / "r", readme)
    assert readme.read_bytes() == once


def test_a_dirty_or_unrecorded_tree_is_said_so(tmp_path):
    fake_run(tmp_path, [0], code={"commit": "feedbeef" * 5, "committed": None, "dirty": True,
                                  "earlier": [{"commit": "abc" * 10, "committed": None, "dirty": False}]})
    metrics = write_report(load(tmp_path / "r" / "params.json"))
    block = readme_block(metrics, "r/metrics.json")
    assert "with uncommitted changes" in block and "earlier invocations at `abcabcabcabc`" in block
    assert "not recorded" in readme_block(dict(metrics, code=None), "r/metrics.json")


def test_a_readme_without_markers_is_an_error_and_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="psr:results begin"):
        update_readme(readme, "x")
    readme.write_text(f"{README_END}\n{README_BEGIN}\n")
    with pytest.raises(ValueError):
        update_readme(readme, "x")
    assert readme.read_text() == f"{README_END}\n{README_BEGIN}\n"


def test_collect_again_recomputes_from_the_stage_files(tmp_path):
    params = fake_run(tmp_path, [0])
    report_run(tmp_path / "r", collect=True)
    assert read_json(tmp_path / "r" / "metrics.json")["arms"]["srlm"]["M2"]["eval"]["synthetic"]["accuracy"] == 120.0
    assert (layout_for(params, 0).stage_dir("srlm", 1, PREFERENCE_STAGE) / DIAGNOSTICS).exists()


def test_the_command_line_rewrites_the_block_and_names_a_missing_marker(tmp_path, capsys):
    fake_run(tmp_path, [0])
    write_report(load(tmp_path / "r" / "params.json"))
    readme = tmp_path / "README.md"
    readme.write_text(README.format(begin=README_BEGIN, end=README_END))
    assert main(["report", str(tmp_path / "r"), "--readme", str(readme)]) == 0
    assert "| PSRLM-M2 | 20.0 |" in readme.read_text()
    readme.write_text("# no markers\n")
    assert main(["report", str(tmp_path / "r"), "--readme", str(readme)]) == 2
    assert "psr:results begin" in capsys.readouterr().err


def _write_provenance(params, seed, provenance):
    data_dir = layout_for(params, seed).data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    write_json(data_dir / "manifest.json", {"digest": "x", "seed": seed, "counts": {}, "provenance": provenance})


def test_synthetic_data_adds_no_data_section(tmp_path):
    params = fake_run(tmp_path, [0])
    layout = layout_for(params, 0)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    write_json(layout.data_dir / "manifest.json", {"digest": "x", "seed": 0, "counts": {}})  # no provenance
    metrics = write_report(params)
    assert "data" not in metrics and "Warm-up data" not in (tmp_path / "r" / "report.md").read_text()


def test_teacher_and_template_eft_are_reported_and_the_template_flagged(tmp_path):
    params = fake_run(tmp_path, [0, 1])
    teacher = {"eft": {"judgments": "teacher", "teacher": "Qwen/Qwen2.5-7B-Instruct", "pairs_judged": 40,
                       "pairs_kept": 10, "kept_rate": 25.0, "template_share": 0.0},
               "ift": {"segmenter": "model", "teacher": "Qwen/Qwen2.5-7B-Instruct", "segmented_by_model": 7,
                       "rule_fallbacks": 3}}
    _write_provenance(params, 0, teacher)
    metrics = write_report(params)
    assert metrics["data"] == {"0": teacher}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| 0 | teacher | Qwen/Qwen2.5-7B-Instruct | 40 | 10 | 25.0 | 0.0 | model | 7 | 3 |" in report
    assert "fixed template" not in report
    _write_provenance(params, 1, {"eft": {"judgments": "template", "teacher": None, "pairs_judged": 12,
                                          "pairs_kept": 12, "kept_rate": 100.0, "template_share": 100.0},
                                  "ift": {"segmenter": "rule", "teacher": None}})
    write_report(params)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "| 1 | template | – | 12 | 12 | 100.0 | 100.0 | rule | – | – |" in report
    assert "**EFT judgments from the fixed template**" in report
