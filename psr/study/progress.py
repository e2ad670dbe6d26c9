"""Progress of running stages, across processes.

Each stage runs in its own Jupyter kernel, so it cannot print to `psr run`'s terminal. Instead a
stage writes `<stage dir>/.progress.json` (`ProgressWriter`: replaced atomically, at most about
once a second) and the runner polls the files of the stages it is running (`ProgressBoard`): on a
terminal a redrawn block with one bar per stage; otherwise (a pipe, a run log) a plain line per
stage now and then, so the log holds the same facts without a flood.

The file is not part of any stage key and never says a stage is done (only its done-marker does);
the runner removes it before and after the stage, and git ignores it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

PROGRESS_FILE = ".progress.json"

OnProgress = Callable[[int, int], None]
"""(done, total): what a library loop reports as it goes (the `on_progress` argument)."""


def progress_path(stage_dir: str | Path) -> Path:
    return Path(stage_dir) / PROGRESS_FILE


def remove_progress(stage_dir: str | Path) -> None:
    progress_path(stage_dir).unlink(missing_ok=True)


@dataclass
class Progress:
    """What one stage is doing now. `initial`/`started`: where and when its phase was first
    reported; the rate (and the time left) counts only what was done since, so work a resumed
    stage found already done does not make the estimate optimistic."""

    phase: str
    done: int
    total: int
    unit: str = ""
    initial: int = 0
    started: float = 0.0
    updated: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    def seconds_left(self, now: float) -> float | None:
        """Time left at the rate seen since the phase was first reported; None before any rate."""
        did, spent = self.done - self.initial, now - self.started
        if did <= 0 or spent <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) * spent / did)

    def describe(self, now: float) -> str:
        """`train 120/500 steps (24%), loss 1.234, ~3m10s left`"""
        unit = f" {self.unit}" if self.unit else ""
        text = f"{self.phase} {self.done}/{self.total}{unit} ({100 * self.fraction:.0f}%)"
        for name, value in self.metrics.items():
            text += f", {name} {value:.4g}"
        left = self.seconds_left(now)
        if left is not None and self.done < self.total:
            text += f", ~{duration(left)} left"
        return text


def duration(seconds: float) -> str:
    """`45s`, `3m10s`, `1h05m`"""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def read_progress(path: str | Path) -> Progress | None:
    """The stage's latest progress, or None when it has written none (or a file from elsewhere)."""
    try:
        return Progress(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _replace(path: Path, text: str) -> None:
    """Write then rename: a reader sees the old file or the new one, never half of one. No fsync:
    a progress file lost in a crash is worth nothing anyway."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ProgressWriter:
    """The stage side: `begin(phase, unit)` starts a phase and returns the `(done, total)`
    callback to hand to a library loop (`on_progress=`); `training_callback()` reports a
    Trainer's steps and loss. Writes are throttled to one per `interval` seconds, except the
    first of a phase and the last (done == total), so a loop may report as often as it likes.
    As a context manager it removes the file on exit."""

    def __init__(self, path: str | Path, *, interval: float = 1.0, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.interval = interval
        self.clock = clock  # wall-clock time: the reader is another process
        self.current: Progress | None = None
        self._phase, self._unit = "", ""
        self._written = float("-inf")
        self._lock = threading.Lock()

    def begin(self, phase: str, unit: str = "") -> OnProgress:
        with self._lock:
            self._phase, self._unit = phase, unit
            self.current = None
        return self.update

    def update(self, done: int, total: int, **metrics: float) -> None:
        """Report `done` of `total` for the current phase (plus metrics to show, e.g. loss)."""
        with self._lock:
            now = self.clock()
            p = self.current
            first = p is None
            if p is None:
                p = self.current = Progress(self._phase, done, total, self._unit, initial=done, started=now)
            p.done, p.total, p.updated = int(done), int(total), now
            p.metrics.update({k: float(v) for k, v in metrics.items()})
            if first or p.done >= p.total or now - self._written >= self.interval:
                self._written = now
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _replace(self.path, json.dumps(asdict(p)))

    def training_callback(self, phase: str = "train") -> "TrainingProgress":
        return TrainingProgress(self, phase)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ProgressWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TrainingProgress(TrainerCallback):
    """Reports optimizer steps out of `max_steps` and the last logged loss to a ProgressWriter.
    It only reads the trainer's state, so training is the same with it or without it."""

    def __init__(self, writer: ProgressWriter, phase: str = "train"):
        self.writer, self.phase = writer, phase
        self.metrics: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.begin(self.phase, "steps")
            self.writer.update(state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.writer.update(state.global_step, state.max_steps, **self.metrics)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.metrics["loss"] = float(logs["loss"])


# ----------------------------------------------------------------------------- runner side


@dataclass
class _Watched:
    path: Path
    since: float
    last_line: float
    next_decile: int = 1
    phase: str = ""
    done: int = -1


class ProgressBoard:
    """The runner side: polls the progress files of the running stages (`add`/`remove`) every
    `interval` seconds in a thread (`with board:`), and shows them.

    `live` (a terminal): a block of one line per running stage, redrawn in place under the log
    lines. Otherwise a plain line per stage through `log` when its progress crosses another
    tenth or `every_s` passed, but never twice within `min_gap_s` (a 10-second stage logs
    nothing but its start and end). `log` goes through the board too (`board.log`), one whole
    line at a time from any thread, so log lines and the block never tear each other."""

    def __init__(self, log: Callable[[str], None] = print, *, live: bool = False, stream: TextIO | None = None,
                 interval: float = 1.0, every_s: float = 30.0, min_gap_s: float = 10.0,
                 clock: Callable[[], float] = time.time, width: int | None = None):
        self._log, self.live, self.stream, self.width = log, live, stream or sys.stdout, width
        self.interval, self.every_s, self.min_gap_s, self.clock = interval, every_s, min_gap_s, clock
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.RLock()
        self._drawn = 0  # lines of the block on screen now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def log(self, msg: str) -> None:
        with self._lock:
            self._erase()
            self._log(msg)
            self._draw()

    def add(self, tag: str, stage_dir: str | Path) -> None:
        now = self.clock()
        with self._lock:
            self._watched[tag] = _Watched(progress_path(stage_dir), since=now, last_line=now)

    def remove(self, tag: str) -> None:
        with self._lock:
            self._watched.pop(tag, None)
            self._erase()
            self._draw()

    def poll(self) -> None:
        """Read every running stage's file once and show what changed."""
        with self._lock:
            now = self.clock()
            current = {tag: read_progress(w.path) for tag, w in self._watched.items()}
            if self.live:
                self._erase()
                self._draw(current, now)
                return
            for tag, p in current.items():
                line = self._periodic_line(self._watched[tag], p, now)
                if line:
                    self._log(f"{tag}: {line}")

    def _periodic_line(self, w: _Watched, p: Progress | None, now: float) -> str | None:
        if p is None or p.total <= 0:
            return None
        if p.phase != w.phase:  # a new phase counts its tenths afresh
            w.phase, w.next_decile, w.done = p.phase, 1, -1
        decile = int(10 * p.fraction)
        moved = p.done != w.done
        due = (decile >= w.next_decile and now - w.last_line >= self.min_gap_s) or (
            moved and now - w.last_line >= self.every_s)
        if not due:
            return None
        w.last_line, w.done, w.next_decile = now, p.done, decile + 1
        return p.describe(now)

    # -- the live block

    def _lines(self, current: dict[str, Progress | None], now: float) -> list[str]:
        # a wrapped line would break the count of lines to move up over
        width = self.width or max(40, shutil.get_terminal_size((100, 20)).columns - 1)
        lines = []
        for tag, w in self._watched.items():
            p = current.get(tag)
            if p is None or p.total <= 0:
                text = f"{tag}  {duration(now - w.since)}"
            else:
                text = f"{tag}  {bar(p.fraction)} {p.describe(now)}"
            lines.append(text[:width])
        return lines

    def _draw(self, current: dict[str, Progress | None] | None = None, now: float | None = None) -> None:
        if not self.live or not self._watched:
            return
        if current is None:
            current = {tag: read_progress(w.path) for tag, w in self._watched.items()}
        lines = self._lines(current, self.clock() if now is None else now)
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _erase(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first line, clear below
            self.stream.flush()
            self._drawn = 0

    # -- the polling thread

    def __enter__(self) -> "ProgressBoard":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="psr-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._erase()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()


def bar(fraction: float, width: int = 20) -> str:
    filled = int(round(width * min(max(fraction, 0.0), 1.0)))
    return "[" + "#" * filled + "." * (width - filled) + "]"
