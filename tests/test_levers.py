"""The levers tables are written from the measurements beside them (no hand-copied numbers)."""

from __future__ import annotations

import json

import pytest

from psr.io import write_json
from psr.tools import levers


def test_tables_are_rewritten_from_probes_and_runs(tmp_path):
    (tmp_path / "probes.jsonl").write_text(
        json.dumps({"name": "p", "seed": 0, "over": ["warmup.max_steps=6000", "warmup.shipped=/x"], "acc": 74.0,
                    "acc_by_ops": {"2": 100.0, "5": 6.3}, "judge": 73.0, "consistency": 62.0,
                    "pairs": {"right_over_wrong": 5, "inverted": 7, "both_wrong": 26}, "n_pairs": 38}) + "\n"
        + json.dumps({"name": "q", "seed": 1, "over": [], "acc": 1.0, "pairs": None}) + "\n")
    run = tmp_path / "somewhere" / "r"
    write_json(run / "metrics.json", {"seeds": [0, 1], "arms": {"psrlm": {
        "M1": {"eval": {"synthetic": {"accuracy": {"mean": 76.0}}},
               "pairs": {"n": {"mean": 20.0}, "right_over_wrong": {"mean": 18.1}, "own_verdicts": {"accuracy": {"mean": 49.7}}}},
        "M4": {"eval": {"synthetic": {"accuracy": {"mean": 76.3}}}}}},
        "gains": {"psrlm": {"synthetic": {"from": "M1", "to": "M4", "per_seed": [1.2, -0.6], "mean": 0.3}}}})
    write_json(run / "params.json", {"overrides": ["run.name=r", "search.temperature=1.0"]})
    levers.add_run(run, tmp_path, "t10")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- levers:probes -->\nstale\n<!-- levers:probes end -->\nprose\n"
                      "<!-- levers:runs -->\n<!-- levers:runs end -->\n")
    levers.write_tables(tmp_path)
    text = readme.read_text()
    assert "stale" not in text and "prose" in text
    assert "| p | 0 | `warmup.max_steps=6000` | 74.0 | 100.0 / – / – / 6.3 | 73.0 | 62.0 | – | 5 / 7 / 26 of 38 |" in text
    assert "| q | 1 | `(preset)` | 1.0 |" in text and "not measured" in text
    assert "| t10 | `search.temperature=1.0` | [0, 1] | psrlm | 76.0 | 76.3 | +1.2, -0.6 | 20.0 (18.1) | 49.7 |" in text
    levers.write_tables(tmp_path)
    assert readme.read_text() == text  # idempotent


def test_a_readme_without_the_markers_is_refused(tmp_path):
    (tmp_path / "probes.jsonl").write_text("")
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="levers:probes"):
        levers.write_tables(tmp_path)
