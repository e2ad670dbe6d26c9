"""Stage progress across processes: a stage writes `.progress.json` (atomically, throttled), the
runner polls and shows it (periodic lines in a log, a redrawn block on a terminal), and a
Trainer reports its steps and loss through a callback that leaves training unchanged."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from psr import config, lineage
from psr.models import train_tokenizer
from psr.prompts import Templates
from psr.study.progress import (
    PROGRESS_FILE,
    Progress,
    ProgressBoard,
    ProgressWriter,
    TrainingProgress,
    progress_path,
    read_progress,
)
from psr.tools.bench_train import tiny_records
from psr.train import sft_examples, warmup_sft

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """A settable wall clock shared by writers and the board."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def file_done(path: Path) -> int | None:
    p = read_progress(path)
    return None if p is None else p.done


# ----------------------------------------------------------------------------- writer and reader


def test_writer_throttles_to_one_write_per_interval_but_never_drops_the_first_or_last(tmp_path):
    clock = Clock()
    path = progress_path(tmp_path)
    w = ProgressWriter(path, interval=1.0, clock=clock)
    report = w.begin("search", "questions")
    report(0, 10)
    assert file_done(path) == 0  # the first report of a phase is written at once
    for done in (1, 2, 3):
        clock.t += 0.2
        report(done, 10)
    assert file_done(path) == 0  # within the interval: not written
    clock.t += 0.5  # 1.1 s after the last write
    report(4, 10)
    assert file_done(path) == 4
    clock.t += 0.1
    report(10, 10)  # the end is always written
    p = read_progress(path)
    assert (p.phase, p.unit, p.done, p.total) == ("search", "questions", 10, 10)


def test_a_new_phase_is_written_at_once_and_measures_its_rate_from_its_first_report(tmp_path):
    clock = Clock()
    path = progress_path(tmp_path)
    w = ProgressWriter(path, clock=clock)
    w.begin("eval a", "questions")(8, 8)
    clock.t += 0.1
    report = w.begin("eval b", "questions")
    report(30, 100)  # resumed: 30 were done by an earlier, killed run
    clock.t += 10
    report(40, 100)
    p = read_progress(path)
    assert (p.phase, p.initial, p.done) == ("eval b", 30, 40)
    # 10 questions in 10 s, 60 to go: 60 s (counting the resumed 30 would say 15 s)
    assert p.seconds_left(clock.t) == pytest.approx(60.0)
    assert p.describe(clock.t) == "eval b 40/100 questions (40%), ~1m00s left"


def test_reader_sees_whole_files_only_and_no_temporary_files_stay(tmp_path):
    path = progress_path(tmp_path)
    w = ProgressWriter(path, interval=0.0)
    report = w.begin("train", "steps")
    stop = threading.Event()
    seen: list[Progress | None] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(read_progress(path))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(2000):
            report(step, 2000, loss=1.0 / (step + 1))
    finally:
        stop.set()
        reader.join()
    whole = [p for p in seen if p is not None]
    assert whole and all(p.phase == "train" and p.total == 2000 for p in whole)
    assert [f.name for f in tmp_path.iterdir()] == [PROGRESS_FILE]


def test_reader_ignores_a_missing_or_foreign_file_and_the_writer_removes_its_file(tmp_path):
    path = progress_path(tmp_path)
    assert read_progress(path) is None
    path.write_text('{"something": "else"}')
    assert read_progress(path) is None
    path.write_text("not json")
    assert read_progress(path) is None
    with ProgressWriter(path) as w:
        w.begin("search")(1, 4)
        assert read_progress(path).done == 1
    assert not path.exists()


# ----------------------------------------------------------------------------- the runner's board


def test_board_logs_two_concurrent_stages_every_tenth_or_30s_never_within_10s(tmp_path):
    clock = Clock()
    lines: list[str] = []
    board = ProgressBoard(lines.append, live=False, clock=clock)
    train_dir, search_dir = tmp_path / "a", tmp_path / "b"
    board.add("[psrlm] 01_warmup_sft M1", train_dir)
    board.add("[srlm] 02_step_search M1", search_dir)
    train = ProgressWriter(progress_path(train_dir), clock=clock)
    search = ProgressWriter(progress_path(search_dir), clock=clock)
    train_step = train.begin("train", "steps")
    search_q = search.begin("search", "questions")
    train_step(0, 100)
    search_q(0, 40)
    board.poll()
    assert lines == []  # nothing done yet
    # training moves 5 steps every 5 s; the search one question every 20 s
    for second in range(5, 65, 5):
        clock.t += 5
        train_step(second, 100, loss=2.0 - second / 100)
        if second % 20 == 0:
            search_q(second // 20, 40)
        board.poll()
    assert lines == [
        "[psrlm] 01_warmup_sft M1: train 10/100 steps (10%), loss 1.9, ~1m30s left",  # first tenth, 10 s in
        "[psrlm] 01_warmup_sft M1: train 20/100 steps (20%), loss 1.8, ~1m20s left",
        "[psrlm] 01_warmup_sft M1: train 30/100 steps (30%), loss 1.7, ~1m10s left",
        "[srlm] 02_step_search M1: search 1/40 questions (2%), ~19m30s left",  # no tenth, but 30 s passed
        "[psrlm] 01_warmup_sft M1: train 40/100 steps (40%), loss 1.6, ~1m00s left",
        "[psrlm] 01_warmup_sft M1: train 50/100 steps (50%), loss 1.5, ~50s left",
        "[psrlm] 01_warmup_sft M1: train 60/100 steps (60%), loss 1.4, ~40s left",
        "[srlm] 02_step_search M1: search 3/40 questions (8%), ~12m20s left",
    ]
    board.remove("[psrlm] 01_warmup_sft M1")
    clock.t += 60
    train_step(100, 100)
    search_q(5, 40)
    board.poll()
    # a stage that ended is no longer watched
    assert lines[8:] == ["[srlm] 02_step_search M1: search 5/40 questions (12%), ~14m00s left"]


def test_board_on_a_terminal_redraws_one_line_per_stage_under_the_log(tmp_path):
    clock = Clock()
    out = io.StringIO()
    logged: list[str] = []

    def log(msg: str) -> None:
        logged.append(msg)
        out.write(msg + "\n")

    board = ProgressBoard(log, live=True, stream=out, clock=clock, width=120)
    board.add("[psrlm] 01_warmup_sft M1", tmp_path / "a")
    board.add("[srlm] 03_judging M2", tmp_path / "b")
    ProgressWriter(progress_path(tmp_path / "a"), clock=clock).begin("train", "steps")(25, 100, loss=1.5)
    clock.t += 7
    board.poll()
    block = out.getvalue()
    assert block.splitlines() == [
        "[psrlm] 01_warmup_sft M1  [#####...............] train 25/100 steps (25%), loss 1.5",
        "[srlm] 03_judging M2  7s",  # no progress file yet: how long it has run
    ]
    out.truncate(0), out.seek(0)
    board.log("[srlm] 03_judging M2: finished in 7.0s")
    board.remove("[srlm] 03_judging M2")
    # the block is erased (cursor up 2 lines, clear), the log line printed, the block redrawn below
    train_line = "[psrlm] 01_warmup_sft M1  [#####...............] train 25/100 steps (25%), loss 1.5\n"
    assert out.getvalue() == (
        "\x1b[2F\x1b[J[srlm] 03_judging M2: finished in 7.0s\n" + train_line + "[srlm] 03_judging M2  7s\n"
        + "\x1b[2F\x1b[J" + train_line
    )
    assert logged == ["[srlm] 03_judging M2: finished in 7.0s"]  # progress never goes to the log


def test_board_thread_polls_until_closed(tmp_path):
    lines: list[str] = []
    polled = threading.Event()

    class Board(ProgressBoard):
        def poll(self) -> None:
            super().poll()
            polled.set()

    with Board(lines.append, interval=0.01, min_gap_s=0.0) as board:
        board.add("[psrlm] 02_step_search M1", tmp_path)
        ProgressWriter(progress_path(tmp_path)).begin("search", "questions")(4, 4)
        for _ in range(2):  # the second poll began after the file was written
            polled.clear()
            assert polled.wait(5)
    assert lines == ["[psrlm] 02_step_search M1: search 4/4 questions (100%)"]


# ----------------------------------------------------------------------------- training


def test_training_callback_reports_steps_and_the_last_logged_loss(tmp_path):
    path = progress_path(tmp_path)
    cb = ProgressWriter(path, interval=0.0).training_callback()
    assert isinstance(cb, TrainingProgress)
    args, control = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none"), TrainerControl()
    state = TrainerState(max_steps=8)
    cb.on_train_begin(args, state, control)
    assert (read_progress(path).done, read_progress(path).total) == (0, 8)
    for step in (1, 2, 3):
        state.global_step = step
        if step == 2:
            cb.on_log(args, state, control, logs={"loss": 0.75, "learning_rate": 1e-3})
        cb.on_step_end(args, state, control)
    p = read_progress(path)
    assert (p.phase, p.unit, p.done, p.total, p.metrics) == ("train", "steps", 3, 8, {"loss": 0.75})
    state.is_world_process_zero = False  # another process of a launched run: only rank 0 reports
    state.global_step = 4
    cb.on_step_end(args, state, control)
    assert read_progress(path).done == 3


def test_training_callback_on_a_tiny_warmup_changes_nothing_but_the_progress_file(tmp_path):
    params = config.load(ROOT / "params" / "tiny.yaml").replace({
        "model.vocab_size": 300, "warmup.max_steps": 4, "warmup.batch_size": 4, "warmup.per_device_batch_size": 4})
    templates = Templates.from_params(params.prompts)
    ift, eft, _ = tiny_records(4)
    corpus = [templates.reasoning_prompt(r.question) + "\n" + "\n".join(r.steps) for r in ift]
    corpus += [templates.judge_prompt(e.question, e.previous_steps, e.step_a, e.step_b) + e.judgment for e in eft]
    tok = train_tokenizer(corpus, 300)
    examples = sft_examples(ift, eft, templates, tok)

    class Recording(ProgressWriter):
        def update(self, done, total, **metrics):
            super().update(done, total, **metrics)
            reports.append((done, total, dict(metrics)))

    reports: list[tuple] = []
    writer = Recording(progress_path(tmp_path), interval=0.0)
    with_cb = warmup_sft(params, examples, tmp_path / "with", tokenizer=tok, seed=0,
                         callbacks=[writer.training_callback()])
    without = warmup_sft(params, examples, tmp_path / "without", tokenizer=tok, seed=0)
    assert [r[:2] for r in reports] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert "loss" in reports[-1][2]
    history = [lineage.read_manifest(d)["log_history"] for d in (with_cb, without)]
    losses = [[h["loss"] for h in hist if "loss" in h] for hist in history]
    assert losses[0] == losses[1] and losses[0]
    assert json.loads(progress_path(tmp_path).read_text())["done"] == 4
