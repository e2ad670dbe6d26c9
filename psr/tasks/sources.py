"""Where the real-data task's rows come from: source specs, and the rows of a source with the
location of each (for error messages).

Source specs (`task.ift_source`, `task.eft_source`, `task.question_source`) are strings:

- `hub:OWNER/NAME` — a Hugging Face hub dataset through `datasets.load_dataset`, split `train`.
  Options after `?`, `&`-separated: `split=test`, `config=NAME`, `files=a.jsonl,b.jsonl` (data
  files inside the repo, each loaded on its own so that files with different schemas — PRM800K's
  phase 1 and phase 2 — never have to agree). Example:
  `hub:tasksource/PRM800K?files=phase1_train.jsonl,phase2_train.jsonl`.
- anything else is local: a `.jsonl`/`.json`/`.parquet` file, a folder (every such file in it,
  sorted), a glob, or several of these separated by `,`. `$VARS` and `~` are expanded, so a
  preset can say `$PSR_DATASET_DIR/math/train.jsonl`. Local files are read by
  `load_dataset("json"|"parquet", data_files=...)` as well, so both paths give the same rows.

A malformed row raises `psr.io.RecordError` naming the file, the 1-based line (for JSON lines;
`row N` otherwise) and the field. Rows are checked when they are read; a builder reads the rows
it samples (in a seeded order, `seeded_order`) until it has enough, so a huge hub set is never
fully parsed.
"""

from __future__ import annotations

import glob
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from psr.io import RecordError, jsonl_rows

HUB_PREFIX = "hub:"


_LOCAL_EXTS = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec: a hub dataset (`name`, `split`, `config`, `files`) or local `paths`."""

    text: str
    hub: bool
    name: str = ""
    split: str = "train"
    config: str | None = None
    files: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


def parse_source(spec: str) -> SourceSpec:
    """Parse a source spec (see the module docstring); ValueError on an unusable one."""
    text = (spec or "").strip()
    if not text:
        raise ValueError("empty source spec: give `hub:OWNER/NAME` or a local file/folder")
    if text.startswith(HUB_PREFIX):
        rest = text[len(HUB_PREFIX):]
        name, _, query = rest.partition("?")
        if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
            raise ValueError(f"source {spec!r}: hub name must look like OWNER/NAME")
        options: dict[str, str] = {}
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or key not in ("split", "config", "files"):
                raise ValueError(f"source {spec!r}: unknown option {item!r} (split=, config=, files=)")
            options[key] = value
        files = tuple(f for f in options.get("files", "").split(",") if f)
        return SourceSpec(text, True, name=name, split=options.get("split", "train"),
                          config=options.get("config") or None, files=files)
    paths: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        expanded = os.path.expanduser(os.path.expandvars(part))
        path = Path(expanded)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix in _LOCAL_EXTS)
        elif any(c in expanded for c in "*?["):
            found = sorted(p for p in glob.glob(expanded) if Path(p).suffix in _LOCAL_EXTS)
        else:
            found = [expanded]
        if not found:
            raise ValueError(f"source {spec!r}: no .jsonl/.json/.parquet files in {part!r}")
        for p in found:
            if not Path(p).is_file():
                raise FileNotFoundError(f"source {spec!r}: no such file {p!r} (for a hub dataset write hub:OWNER/NAME)")
            if Path(p).suffix not in _LOCAL_EXTS:
                raise ValueError(f"source {spec!r}: {p!r} is not .jsonl, .json or .parquet")
        paths.extend(found)
    return SourceSpec(text, False, paths=tuple(paths))


@dataclass
class _Part:
    label: str  # file path or hub name, for error messages
    dataset: Any  # datasets.Dataset
    lines: list[int] | None  # 1-based line of each row (JSON lines), else None


class Source:
    """The rows of one source spec, loaded through `datasets`, each with a location for errors."""
    def __init__(self, spec: str, cache_dir: str | None = None):
        self.spec = parse_source(spec)
        self.parts: list[_Part] = []
        if self.spec.hub:
            for data_file in self.spec.files or (None,):
                self.parts.append(self._load_hub(data_file, cache_dir))
        else:
            for path in self.spec.paths:
                self.parts.append(self._load_local(path, cache_dir))
        self._offsets = []
        total = 0
        for part in self.parts:
            self._offsets.append(total)
            total += len(part.dataset)
        self._len = total

    def _load_hub(self, data_file: str | None, cache_dir: str | None) -> _Part:
        from datasets import load_dataset

        s = self.spec
        label = f"{HUB_PREFIX}{s.name}" + (f"/{data_file}" if data_file else f"[{s.split}]")
        kwargs: dict[str, Any] = {"split": "train" if data_file else s.split, "cache_dir": cache_dir}
        if data_file:
            kwargs["data_files"] = data_file
        try:
            ds = load_dataset(s.name, s.config, **kwargs)
        except Exception as e:
            raise RuntimeError(
                f"cannot load {label}: {type(e).__name__}: {str(e)[:300]} "
                "(offline? give a local .jsonl/.parquet path instead; see psr.tasks.sources)"
            ) from e
        return _Part(label, ds, None)

    def _load_local(self, path: str, cache_dir: str | None) -> _Part:
        from datasets import load_dataset

        builder = "parquet" if path.endswith(".parquet") else "json"
        try:
            ds = load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
        except Exception as e:
            _diagnose_json_lines(path)  # raises a RecordError naming the line when it can
            raise RecordError(f"{path}: cannot be read as {builder}: {type(e).__name__}: {str(e)[:300]}") from None
        lines = None
        if path.endswith((".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                numbers = [i for i, line in enumerate(f, start=1) if line.strip()]
            if len(numbers) == len(ds):  # JSON lines (a .json array has one row per element)
                lines = numbers
        return _Part(path, ds, lines)

    def __len__(self) -> int:
        return self._len

    def where(self, index: int) -> str:
        part, local = self._locate(index)
        if part.lines is not None:
            return f"{part.label}:{part.lines[local]}"
        return f"{part.label}: row {local + 1}"

    def _locate(self, index: int) -> tuple[_Part, int]:
        if not 0 <= index < self._len:
            raise IndexError(index)
        for part, offset in zip(reversed(self.parts), reversed(self._offsets)):
            if index >= offset:
                return part, index - offset
        raise IndexError(index)  # pragma: no cover

    def columns(self) -> set[str]:
        cols: set[str] = set()
        for part in self.parts:
            cols |= set(part.dataset.column_names)
        return cols

    def rows(self, order: Sequence[int] | None = None, chunk: int = 512) -> Iterator[tuple[str, dict]]:
        """(location, row) in the given order of global indices (default: file order)."""
        if order is None:  # sequential: stream each part (fast for a full pass over PRM800K)
            for part, offset in zip(self.parts, self._offsets):
                for local, row in enumerate(part.dataset):
                    yield self.where(offset + local), row
            return
        indices = order
        for start in range(0, len(indices), chunk):
            block = list(indices[start:start + chunk])
            by_part: dict[int, list[tuple[int, int]]] = {}
            for pos, index in enumerate(block):
                part, local = self._locate(index)
                by_part.setdefault(id(part), []).append((pos, local))
            fetched: list[Any] = [None] * len(block)
            for part in self.parts:
                wanted = by_part.get(id(part))
                if wanted:
                    rows = part.dataset.select([local for _, local in wanted]).to_list()
                    for (pos, _), row in zip(wanted, rows):
                        fetched[pos] = row
            for index, row in zip(block, fetched):
                yield self.where(index), row


def _diagnose_json_lines(path: str) -> None:
    """When `datasets` refuses a JSON-lines file, find the line it choked on."""
    if path.endswith(".jsonl"):
        for _ in jsonl_rows(path, drop_torn_tail=False):
            pass


def seeded_rng(seed: int, name: str) -> random.Random:
    """A random stream of its own per (seed, use), stable across Python versions."""
    return random.Random(f"psr-real:{seed}:{name}")


def seeded_order(n: int, seed: int, name: str) -> list[int]:
    """A seeded order of `n` row indices (for `Source.rows`)."""
    order = list(range(n))
    seeded_rng(seed, name).shuffle(order)
    return order
