import os
from dataclasses import dataclass, field

import pytest

from psr.io import FLATTEN, RecordError, append_jsonl, jsonl_rows, read_json, read_jsonl, write_json, write_jsonl
from psr.records import PPDPair, Question


def test_jsonl_round_trip_with_dataclasses(tmp_path):
    qs = [Question("q1", "one?"), Question("q2", "two?")]
    write_jsonl(tmp_path / "q.jsonl", qs)
    assert read_jsonl(tmp_path / "q.jsonl", Question) == qs


def test_append_groups_and_torn_tail_is_dropped(tmp_path):
    path = tmp_path / "a.jsonl"
    append_jsonl(path, [{"id": "1"}, {"id": "2"}])
    with open(path, "a") as f:
        f.write('{"id": "3", "half')  # a kill in the middle of a write
    assert [r["id"] for r in read_jsonl(path)] == ["1", "2"]
    append_jsonl(path, [{"id": "3"}])  # the next append first cuts the torn line
    assert [r["id"] for r in read_jsonl(path)] == ["1", "2", "3"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "q1", "question": "x"}\nnot json\n{"id": "q3", "question": "y"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2"):
        read_jsonl(path, Question)


def test_missing_and_unexpected_fields_are_named(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "q1"}\n')
    with pytest.raises(RecordError, match=r"q.jsonl:1: missing field 'question'"):
        read_jsonl(path, Question)
    path.write_text('{"id": "q1", "question": "x", "gold": "4"}\n')
    with pytest.raises(RecordError, match="unexpected field 'gold'"):
        read_jsonl(path, Question)


def test_optional_fields_default(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "question": "q", "previous_steps": [], "chosen": "c", "rejected": "r", '
                    '"is_final": false, "scores": [1, 0], "iteration": 1}\n')
    (pair,) = read_jsonl(path, PPDPair)
    assert pair.rejected_is_final is False


def test_write_json_is_atomic_no_temp_left(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    write_json(tmp_path / "m.json", {"a": 2})
    assert read_json(tmp_path / "m.json") == {"a": 2}
    assert os.listdir(tmp_path) == ["m.json"]


def test_rows_carry_their_file_and_line_and_must_be_objects(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "1"}\n\n{"id": "3"}\n')
    assert list(jsonl_rows(path)) == [(f"{path}:1", {"id": "1"}), (f"{path}:3", {"id": "3"})]
    path.write_text('{"id": "1"}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"r.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_an_input_file_keeps_its_unterminated_last_line_an_error(tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_text('{"id": "1"}\n{"id": ')
    assert [row for _, row in jsonl_rows(path)] == [{"id": "1"}]  # an append log drops the torn tail
    with pytest.raises(RecordError, match=r"input.jsonl:2: not valid JSON"):
        list(jsonl_rows(path, drop_torn_tail=False))


@dataclass
class Tally:
    wins: int = 0
    losses: int = 0


@dataclass
class Player:
    name: str
    tally: Tally = field(default_factory=Tally, metadata={FLATTEN: True})


def test_a_flattened_sub_record_shares_the_line(tmp_path):
    path = tmp_path / "players.jsonl"
    players = [Player("ann", Tally(3, 1)), Player("bob")]
    write_jsonl(path, players)
    assert path.read_text().splitlines()[0] == '{"name": "ann", "wins": 3, "losses": 1}'
    assert read_jsonl(path, Player) == players
    path.write_text('{"name": "cy", "wins": 2}\n{"name": "dee", "draws": 1}\n')
    with pytest.raises(RecordError, match=r"players.jsonl:2: unexpected field 'draws' for Player"):
        read_jsonl(path, Player)
