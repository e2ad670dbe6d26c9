import json
from pathlib import Path

import pytest

from psr.config import ConfigError, Params, load

TINY = Path(__file__).resolve().parent.parent / "params" / "tiny.yaml"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "preset.yaml"
    p.write_text(text)
    return p


def test_tiny_preset_loads_with_typed_values():
    p = load(TINY)
    assert isinstance(p, Params)
    assert p.search.width == 6 and p.search.temperature == 0.5
    assert isinstance(p.run.seeds, tuple) and p.source == str(TINY)


def test_overrides_are_applied_and_typed():
    p = load(TINY, ["search.width=4", "dpo.beta=0.3", "run.seeds=[1, 2]", "prompts.style=paper"])
    assert p.search.width == 4 and p.dpo.beta == 0.3 and p.run.seeds == (1, 2)
    assert p.prompts.style == "paper"


def test_params_are_frozen():
    p = load(TINY)
    with pytest.raises(Exception):
        p.search.width = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("search:\n  widht: 4\n", "search.widht"),
        ("serch:\n  width: 4\n", "'serch'"),
        ("search:\n  width: 1\n", "search.width"),
        ("search:\n  temperature: -0.1\n", "search.temperature"),
        ("search:\n  width: four\n", "search.width"),
        ("dpo:\n  beta: true\n", "dpo.beta"),
        ("model:\n  lora:\n    rr: 3\n", "model.lora.rr"),
        ("run:\n  arms: [psrlm, other]\n", "run.arms"),
        ("search: [1, 2]\n", "search"),
        ("- just\n- a list\n", "top level"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="malformed YAML"):
        load(write(tmp_path, "search: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")


def test_bad_override_syntax_and_key():
    with pytest.raises(ConfigError, match="key=value"):
        load(TINY, ["search.width"])
    with pytest.raises(ConfigError, match="search.nope"):
        load(TINY, ["search.nope=3"])


def test_cli_with_misspelled_key_fails_before_writing_anything(tmp_path, monkeypatch):
    from psr.cli import main

    monkeypatch.chdir(tmp_path)
    preset = write(tmp_path, f"run:\n  name: x\n  results_dir: {tmp_path / 'results'}\nsearch:\n  widht: 3\n")
    assert main(["run", str(preset)]) == 2
    assert not (tmp_path / "results").exists()


def test_digest_is_stable_and_section_sensitive():
    a, b = load(TINY), load(TINY, ["search.width=5"])
    assert a.digest() == load(TINY).digest()
    assert a.digest() != b.digest()
    assert a.digest("dpo") == b.digest("dpo") and a.digest("search") != b.digest("search")


def test_replace_validates():
    p = load(TINY)
    assert p.replace({"search.width": 3}).search.width == 3
    with pytest.raises(ConfigError):
        p.replace({"search.width": 0})


def test_pools_must_cover_every_iteration():
    with pytest.raises(ConfigError, match="task.questions_per_iteration"):
        load(TINY, ["run.iterations=4"])


def test_the_verified_arm_needs_psrlm_and_the_synthetic_task():
    assert load(TINY).run.arms == ("psrlm", "srlm", "verified")
    with pytest.raises(ConfigError, match="run.arms .*psrlm's M1"):
        load(TINY, ["run.arms=[srlm, verified]"])
    with pytest.raises(ConfigError, match="run.arms .*per-step answer key"):
        load(TINY, ["task.kind=real", "task.eft_judgments=template"])


def test_multi_process_training_runs_one_stage_at_a_time(tmp_path):
    (tmp_path / "accel.yaml").write_text("distributed_type: MULTI_GPU\nnum_processes: 2\n")
    with pytest.raises(ConfigError, match="run.workers") as e:
        load(write(tmp_path, "run:\n  accelerate_config: accel.yaml\n  workers: 2\n"))
    assert "accelerate_config" in str(e.value)
    assert load(write(tmp_path, "run:\n  accelerate_config: accel.yaml\n  workers: 1\n")).run.workers == 1


def test_tiny_digest_is_pinned():
    """Stage keys and lineage digests hash `to_dict()`: a change here invalidates every finished run."""
    p = load(TINY)
    assert p.digest() == "0d5aef836f456a71"  # the whole params: new knobs change it, their defaults not the data
    assert p.digest("search") == "71be97faf809abe2" and p.digest("dpo") == "4391c5b3245810e1"
    # M0's judging and the test-time search read sections of their own: judging and evaluation keep their keys
    assert p.digest("judge", "eval") == "5d0b286d104e54bd"
    data = p.to_dict()
    assert data["source"] == str(TINY) and data["run"]["seeds"] == [0] and isinstance(data["task"]["operations"], list)
    assert list(data) == ["run", "task", "model", "prompts", "warmup", "search", "judge", "dpo", "srlm", "eval", "m0",
                          "test_time", "vllm", "source"]


def test_types_are_strict_but_numbers_are_numbers(tmp_path):
    p = load(write(tmp_path, "warmup:\n  learning_rate: 1e-6\n  epochs: 2\n"))
    assert p.warmup.learning_rate == 1e-6 and isinstance(p.warmup.epochs, float)
    for text, needle in [("search:\n  width: true\n", "search.width must be an integer, got True"),
                         ("search:\n  width: 6.0\n", "search.width must be an integer"),
                         ("eval:\n  benchmarks: synthetic\n", "eval.benchmarks must be a list"),
                         ("run:\n  seeds: ['0']\n", "run.seeds[0] must be an integer"),
                         ("judge:\n  do_sample: 1\n", "judge.do_sample must be true or false")]:
        with pytest.raises(ConfigError) as e:
            load(write(tmp_path, text))
        assert needle in str(e.value)


def test_range_errors_name_the_key_the_rule_and_the_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "search:\n  width: 1\n"))
    assert str(e.value) == f"{tmp_path / 'preset.yaml'}: search.width must be >= 2 (pairwise judging needs two candidates) (got 1)"


def test_an_unvalidated_copy_reports_its_broken_rules():
    search = load(TINY).search
    assert search.check() == {}
    assert "width" in search.model_copy(update={"width": 1}).check()


def test_a_runs_resolved_params_file_loads_to_the_same_params(tmp_path):
    p = load(TINY, ["search.width=4"])
    resolved = tmp_path / "params.json"
    resolved.write_text(json.dumps({"source": str(TINY), "overrides": ["search.width=4"], "params": p.to_dict()}))
    again = load(resolved)
    assert again == p and again.source == str(TINY) and again.digest() == p.digest()
    assert load(resolved, ["run.torch_threads=2"]).run.torch_threads == 2
    with pytest.raises(ConfigError, match="search.widht"):
        load(resolved, ["search.widht=3"])
    resolved.write_text(json.dumps({"params": {**p.to_dict(), "search": {"width": 1}}}))
    with pytest.raises(ConfigError, match=f"{resolved}: search.width"):
        load(resolved)
