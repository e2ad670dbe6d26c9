"""A run records the commit of the code that made it and whether the working tree differed from it
(run outputs under results/ aside), keeping earlier records when it is resumed with other code."""

from __future__ import annotations

import subprocess

from psr.study.provenance import code_version, with_earlier


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_commit_and_a_dirty_tree_are_recorded_but_run_outputs_do_not_count(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("{}\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "metrics.json").write_text('{"rerun": true}\n')
    (tmp_path / "results" / "new.json").write_text("{}\n")
    clean = code_version(tmp_path)
    assert clean["commit"] == head and clean["dirty"] is False and clean["committed"]
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_version(tmp_path)["dirty"] is True


def test_outside_a_checkout_nothing_is_claimed(tmp_path):
    assert code_version(tmp_path) == {"commit": None, "committed": None, "dirty": None}


def test_a_resumed_run_keeps_the_records_of_other_code():
    a, b = {"commit": "a", "dirty": False}, {"commit": "b", "dirty": True}
    assert with_earlier(a, None) == a and with_earlier(a, a) == a
    assert with_earlier(b, a) == dict(b, earlier=[a])
    assert with_earlier(a, dict(b, earlier=[a])) == dict(a, earlier=[a, b])
