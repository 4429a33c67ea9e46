"""recbole_cmi.files: the one atomic writer (checkpoints, reports, converted data, charts), and json through it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recbole_cmi.files import atomic_open, plain, write_json, write_text


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


def test_json_files_hold_plain_values_in_their_order(tmp_path):
    data = plain({"b": np.float32(0.5), 3: (np.int64(2), [np.bool_(True), "x"]), "a": {"n": None}})
    assert data == {"b": 0.5, "3": [2, [True, "x"]], "a": {"n": None}}
    assert [type(v) for v in (data["b"], data["3"][0], data["3"][1][0])] == [float, int, bool]
    write_json(tmp_path / "spec.json", data)
    text = (tmp_path / "spec.json").read_text(encoding="utf-8")
    assert (
        text == '{\n  "b": 0.5,\n  "3": [\n    2,\n    [\n      true,\n      "x"\n    ]\n  ],\n'
        '  "a": {\n    "n": null\n  }\n}\n'
    )
    assert json.loads(text) == data
    with pytest.raises(TypeError):  # not plain: nothing is written over the old file
        write_json(tmp_path / "spec.json", {"x": object()})
    assert (tmp_path / "spec.json").read_text(encoding="utf-8") == text
