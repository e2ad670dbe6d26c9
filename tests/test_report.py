"""metrics.json aggregation over seeds, the report tables and the figures, from stage summaries."""

from __future__ import annotations

import json
from pathlib import Path

from psr.config import load
from psr.io import write_json
from psr.study.graph import plan
from psr.study.layout import layout_for
from psr.study.report import collect_metrics, write_report

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"


def fake_run(tmp_path, seeds):
    """Write the summaries a finished run would hold, with accuracy = 10*k + seed."""
    params = load(TINY, [f"run.results_dir={tmp_path}", f"run.seeds={list(seeds)}", "run.iterations=2",
                         "run.name=r"])
    for seed in seeds:
        layout = layout_for(params, seed)
        for arm in params.run.arms:
            for stage, k in plan(params):
                d = layout.stage_dir(arm, k, stage)
                d.mkdir(parents=True, exist_ok=True)
                write_json(layout.marker_path(arm, k, stage), {"key": "x", "wall_s": 1.5, "stage": stage, "k": k})
                if stage == "05_evaluate":
                    write_json(d / "summary.json", {"synthetic": {"benchmark": "synthetic", "n": 100,
                               "accuracy": 10.0 * k + seed, "mean_steps": 3.0, "mean_step_tokens": 7.0,
                               "mean_tokens": 30.0, "truncated": 0}})
                elif stage == "03_judging":
                    write_json(d / "summary.json", {"n": 50, "accuracy": 60.0 + seed, "position_consistency": 40.0,
                                                    "parse_rate": 100.0})
                elif stage == "02_step_search":
                    write_json(d / "summary.json", {"questions": 10, "pairs": 20 + seed})
    return params


def test_one_seed_keeps_values(tmp_path):
    m = collect_metrics(fake_run(tmp_path, [0]))
    cell = m["arms"]["psrlm"]["M2"]
    assert cell["eval"]["synthetic"]["accuracy"] == 20.0 and cell["eval"]["synthetic"]["n"] == 100
    assert cell["judge"]["accuracy"] == 60.0 and cell["search"]["pairs"] == 20
    assert cell["wall_s"]["05_evaluate"] == 1.5
    assert set(m["arms"]["srlm"]) == {"M1", "M2", "M3"}


def test_several_seeds_give_mean_and_sd(tmp_path):
    params = fake_run(tmp_path, [0, 1, 2])
    metrics = write_report(params)
    cell = metrics["arms"]["psrlm"]["M3"]["eval"]["synthetic"]
    assert cell["accuracy"] == 31.0 and cell["per_seed"] == [30.0, 31.0, 32.0] and cell["sd"] == 1.0
    assert metrics["arms"]["psrlm"]["M1"]["judge"]["accuracy"] == 61.0
    root = tmp_path / "r"
    assert json.loads((root / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    report = (root / "report.md").read_text()
    assert "| PSRLM-M3 | 31.0 ± 1.0 |" in report and "mean ± sd" in report
    for fig in ("accuracy_by_iteration.png", "judge_by_iteration.png", "steps_by_iteration.png"):
        assert (root / fig).stat().st_size > 1000


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
