"""recbole_cmi.files: the one atomic writer (checkpoints, reports, converted data, charts)."""

from __future__ import annotations

import pytest

from recbole_cmi.files import atomic_open, write_text


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    write_text(target, "old\n")
    write_text(target, "new\r\nline\n")
    assert target.read_bytes() == b"new\r\nline\n"  # no newline translation
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as f:
        f.write(b"half")
        raise RuntimeError("killed while saving")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_open(tmp_path / "x", "a"):
        pass
