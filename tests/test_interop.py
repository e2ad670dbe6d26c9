"""Step-DPO interop: PPDPair <-> the xinlai/Math-Step-DPO-10K layout, both ways."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psr.tools.interop import HEADER, export_step_dpo, from_step_dpo, import_step_dpo, load_step_dpo, to_step_dpo
from psr.io import RecordError, read_jsonl
from psr.records import PPDPair
from psr.steps import STEP_MARKER

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "real" / "step_dpo.jsonl"
SHARED = ("question", "previous_steps", "chosen", "rejected", "is_final", "rejected_is_final")


def pair(**kw) -> PPDPair:
    base = dict(id="p1", question="Ann has 3 bags of 4 marbles. How many marbles?",
                previous_steps=["There are 3 bags.", "Each bag holds 4 marbles."],
                chosen="So she has $3 \\cdot 4 = 12$ marbles, $\\boxed{12}$.",
                rejected="So she has $3 + 4 = 7$ marbles.", is_final=True, scores=[5, 4, 3, 2, 1, 0],
                iteration=2, rejected_is_final=False)
    base.update(kw)
    return PPDPair(**base)


def shared(p: PPDPair) -> tuple:
    return tuple(getattr(p, name) for name in SHARED)


def test_export_layout():
    row = to_step_dpo(pair())
    assert row == {
        "prompt": "Ann has 3 bags of 4 marbles. How many marbles?",
        "initial_reason_steps": "Let's think step by step.\nStep 1: There are 3 bags.\nStep 2: Each bag holds 4 marbles.\n",
        "chosen": "Step 3: So she has $3 \\cdot 4 = 12$ marbles, $\\boxed{12}$.",
        "rejected": "Step 3: So she has $3 + 4 = 7$ marbles.",
    }
    first = to_step_dpo(pair(previous_steps=[]))
    assert first["initial_reason_steps"] == HEADER and first["chosen"].startswith("Step 1: ")


def test_round_trip_without_and_with_extras(tmp_path):
    pairs = [pair(), pair(id="p2", previous_steps=[], chosen="First, 3 bags.", rejected="First, 4 bags.",
                          is_final=False, scores=[3, 3, 2, 2, 1, 1], iteration=1)]
    export_step_dpo(pairs, tmp_path / "plain.jsonl")
    back = import_step_dpo(tmp_path / "plain.jsonl", iteration=7)
    assert [shared(p) for p in back] == [shared(p) for p in pairs]
    assert all(p.iteration == 7 and p.scores == [] for p in back)
    assert len({p.id for p in back}) == 2
    columns = set(read_jsonl(tmp_path / "plain.jsonl")[0])
    assert columns == {"prompt", "initial_reason_steps", "chosen", "rejected"}
    export_step_dpo(pairs, tmp_path / "full.jsonl", extras=True)
    assert import_step_dpo(tmp_path / "full.jsonl") == pairs


_content = st.text(alphabet=st.sampled_from(list("abcxyz 0123456789+-=$\\{}.,:S\n")), min_size=1, max_size=40).map(
    str.strip).filter(lambda s: s and not STEP_MARKER.search(s))


@settings(max_examples=60, deadline=None)
@given(question=_content, previous=st.lists(_content, max_size=4), chosen=_content, rejected=_content)
def test_round_trip_property(question, previous, chosen, rejected):
    p = pair(question=question, previous_steps=previous, chosen=chosen, rejected=rejected,
             is_final="\\boxed" in chosen, rejected_is_final="\\boxed" in rejected)
    assert shared(from_step_dpo(to_step_dpo(p), "row")) == shared(p)
    assert from_step_dpo(to_step_dpo(p, extras=True), "row") == p


def test_import_the_published_layout():
    pairs = import_step_dpo(FIXTURE)
    assert pairs[0].question.startswith("Ann has 3 bags")
    assert pairs[0].previous_steps == ["Ann has $3 \\times 4 = 12$ marbles."]
    assert pairs[0].chosen == "After giving away 5, she has $12 - 5 = 7$ marbles.\nThe answer is: 7"
    assert pairs[0].is_final is False  # Math-Step-DPO-10K ends with "The answer is:", not \boxed
    assert pairs[1].previous_steps == [] and pairs[1].is_final and pairs[1].rejected_is_final
    assert load_step_dpo(str(FIXTURE)) == pairs  # the same rows through `datasets`


def _rows(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "rows.jsonl"
    good = to_step_dpo(pair())
    path.write_text(json.dumps(good) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("change, field", [
    (lambda r: r.pop("chosen"), "chosen"),
    (lambda r: r.update(rejected=7), "rejected"),
    (lambda r: r.update(chosen="So she has 12."), "chosen"),
    (lambda r: r.update(chosen="Step 2: wrong number"), "chosen"),
    (lambda r: r.update(rejected="Step 3: one\nStep 4: two"), "rejected"),
    (lambda r: r.update(initial_reason_steps="Let's think step by step.\nFirst we look."), "initial_reason_steps"),
    (lambda r: r.update(prompt="  "), "prompt"),
    (lambda r: r.update(scores=["x"]), "scores"),
])
def test_malformed_rows_name_line_and_field(tmp_path, change, field):
    row = to_step_dpo(pair())
    change(row)
    path = _rows(tmp_path, [row])
    with pytest.raises(RecordError, match=rf"{re.escape(str(path))}:3: field '{field}'"):
        import_step_dpo(path)


def test_non_object_and_bad_json_rows(tmp_path):
    path = _rows(tmp_path, [[1, 2]])
    with pytest.raises(RecordError, match=r":3: expected a JSON object"):
        import_step_dpo(path)
    path.write_text('{"prompt": \n{"prompt": "x"}\n')
    with pytest.raises(RecordError, match=r":1: not valid JSON"):
        import_step_dpo(path)


def test_record_fields_are_all_covered():
    """Every PPDPair field is either carried by the layout or an extra column."""
    from psr.tools.interop import EXTRAS

    names = {f.name for f in dataclasses.fields(PPDPair)}
    assert names == set(SHARED) | set(EXTRAS)
