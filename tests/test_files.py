"""neuralnets.files: the one place that writes files (exclusive create, lock, link replacement)."""

from __future__ import annotations

import os

import pytest

from neuralnets.files import exclusive_text, held_lock, replace_symlink, write_text_atomic


def test_exclusive_text_creates_once_and_leaves_no_temporary_file(tmp_path):
    exclusive_text(tmp_path / "a.json", "first")
    with pytest.raises(FileExistsError):
        exclusive_text(tmp_path / "a.json", "second")
    assert (tmp_path / "a.json").read_text() == "first"
    assert os.listdir(tmp_path) == ["a.json"]


def test_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with held_lock(tmp_path / ".lock", "pid 1 on here"):
        with pytest.raises(BlockingIOError) as err, held_lock(tmp_path / ".lock", "pid 2"):
            pass
        assert err.value.args[1] == "pid 1 on here"
    with held_lock(tmp_path / ".lock", "pid 3"):  # released when the block ended
        pass


def test_replace_symlink_points_at_the_new_target_with_nothing_left_over(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    replace_symlink(tmp_path / "best", tmp_path / "a")
    replace_symlink(tmp_path / "best", tmp_path / "b")
    assert (tmp_path / "best").resolve() == tmp_path / "b"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "best"]


def test_write_text_atomic_replaces_whole_and_refuses_a_planted_link(tmp_path):
    target = tmp_path / "sub" / "out.md"
    assert write_text_atomic(target, "one\n") == target and target.read_text() == "one\n"
    write_text_atomic(target, "two\n")
    assert target.read_text() == "two\n" and [p.name for p in target.parent.iterdir()] == ["out.md"]
    link = tmp_path / "link.md"
    link.symlink_to(tmp_path / "elsewhere.md")
    with pytest.raises(FileExistsError, match="symbolic link"):
        write_text_atomic(link, "x")
    assert not (tmp_path / "elsewhere.md").exists()
