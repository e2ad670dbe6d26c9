"""Atomic, resumable file I/O for JSON and JSON-lines records.

Every write either lands whole or not at all (temp file + `os.replace`), and appends add whole
groups of lines in one `write` + `fsync`, so a run killed at any moment (even `kill -9`) leaves
nothing half-written that a resumed run could mistake for finished work. A torn last line from a
kill mid-append is dropped on read; a malformed line anywhere else is an error naming file and line.

A dataclass field marked `metadata={FLATTEN: True}` (itself a dataclass) is written as its own
fields beside the record's others and gathered back on read, so a record can hold a shared
sub-record while its file keeps one flat JSON object per line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

FLATTEN = "psr.io.flatten"


class RecordError(ValueError):
    """A malformed data row; the message names the file, the 1-based line and the problem."""


def _plain(record: Any) -> Any:
    if not dataclasses.is_dataclass(record):
        return record
    row = dataclasses.asdict(record)
    for f in dataclasses.fields(record):
        if f.metadata.get(FLATTEN):
            row.update(row.pop(f.name))
    return row


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON: {e}") from None


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(_plain(r), ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Append a group of records as one write, so a group (e.g. one question's pairs) is either
    wholly present or absent (apart from a torn tail, which `read_jsonl` drops)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(_plain(r), ensure_ascii=False) + "\n" for r in records)
    if not text:
        return
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut an unterminated last line left by a kill mid-append, before appending after it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)


def read_jsonl(path: str | Path, record_type: type[T] | None = None) -> list[T] | list[dict]:
    """All records of a JSON-lines file, as dicts or as `record_type` dataclasses."""
    return [
        from_row(record_type, row, where) if record_type else row
        for where, row in jsonl_rows(path)
    ]


def jsonl_rows(path: str | Path, *, drop_torn_tail: bool = True) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) for every non-blank line, the line 1-based. A line that is not a JSON
    object is a RecordError naming file and line, except an unterminated last line when
    `drop_torn_tail` (a file this project appends to, killed mid-append: the group it belonged
    to is redone on resume); input files that are never appended to pass False."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = path.read_text(encoding="utf-8").split("\n")
    torn_tail = lines[-1] != ""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if drop_torn_tail and torn_tail and number == len(lines):
                return
            raise RecordError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def from_row(record_type: type[T], row: Any, where: str) -> T:
    """Build a dataclass from a dict, naming the missing or unexpected field on failure."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    row = dict(row)
    fields = {f.name: f for f in dataclasses.fields(record_type)}
    nested = {}
    for name, f in fields.items():
        if f.metadata.get(FLATTEN):
            sub_type = typing.get_type_hints(record_type)[name]
            own = {g.name for g in dataclasses.fields(sub_type)}
            nested[name] = from_row(sub_type, {k: row.pop(k) for k in list(row) if k in own}, where)
    required = [
        n for n, f in fields.items()
        if n not in nested and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in row:
            raise RecordError(f"{where}: missing field {name!r} for {record_type.__name__}")
    unknown = sorted(set(row) - set(fields))
    if unknown:
        raise RecordError(f"{where}: unexpected field {unknown[0]!r} for {record_type.__name__}")
    return record_type(**row, **nested)
