"""``benchmark authors-code``: our leave-one-out split written as the CMI authors' ``pos_seqs_renbr.txt``."""

from __future__ import annotations

import pytest
from conftest import call, verb

from recbole_cmi.benchmark import authors_code

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
# u7: a(1) b(2) c(3) d(4); x: a(1) d(3) b(3, after d in the file) c(5); y has two interactions only.
ROWS = [
    ("u7", "b", "2"),
    ("u7", "a", "1"),
    ("x", "c", "5"),
    ("u7", "c", "3"),
    ("x", "a", "1"),
    ("x", "d", "3"),
    ("u7", "d", "4"),
    ("y", "a", "1"),
    ("y", "b", "2"),
    ("x", "b", "3"),
]
# Users and items numbered by first appearance among the users kept: u7=1, x=2; b=1, a=2, c=3, d=4.
WECHAT_LINES = ["1,12,2,1", "1,13,3", "1,14,4", "2,12,2,4", "2,13,1", "2,14,3"]


def write_inter(folder, rows, header=HEADER, name="tiny.inter"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([header, *("\t".join(row) for row in rows)]) + "\n", encoding="utf-8")
    return path


def benchmark(argv):
    return call(verb("benchmark"), ["authors-code", *argv])


def test_their_day_windows():
    # data_iterator_cl.Data: days = 14 if 'wechat' in source else 10; max_day = 14 if 'wechat' in source else 29
    assert authors_code.day_window("wechat") == (1, 14)
    assert authors_code.day_window("my_wechat_copy") == (1, 14)
    assert authors_code.day_window("takatak") == (20, 29)


def test_a_long_history_is_one_training_day_then_one_item_a_day():
    items = list(range(101, 131))  # 30 items: 28 for training, however many the window has days
    assert authors_code.user_days(items, 14) == [(12, items[:28]), (13, [129]), (14, [130])]
    assert authors_code.user_days([5, 6, 7], 29) == [(27, [5]), (28, [6]), (29, [7])]


def test_the_tiny_file_gives_the_expected_lines_and_maps(tmp_path):
    inter = write_inter(tmp_path / "in", ROWS)
    out = tmp_path / "out"
    status, stdout, stderr = benchmark(["--input", str(inter), "--output", str(out)])
    assert status == 0, stderr
    assert (out / "pos_seqs_renbr.txt").read_text() == "".join(line + "\n" for line in WECHAT_LINES)
    assert (out / "user_ids.tsv").read_text() == "user_id\tauthors_uid\nu7\t1\nx\t2\n"
    assert (out / "item_ids.tsv").read_text() == "item_id\tauthors_item\nb\t1\na\t2\nc\t3\nd\t4\n"
    assert stdout.splitlines()[:3] == [
        "2 users, 4 items, 8 interactions; days 12 (training), 13 (validation target), 14 (test target) "
        "of their window 1..14",
        "left out: 1 users with fewer than 3 interactions",
        "their TrainData leaves out 2 users (fewer than 4 training items); their TestData still evaluates them",
    ]


def test_a_folder_input_and_the_other_window(tmp_path):
    write_inter(tmp_path / "in", ROWS)
    status, _, stderr = benchmark(
        ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dataset_name", "takatak"]
    )
    assert status == 0, stderr
    lines = (tmp_path / "out" / "pos_seqs_renbr.txt").read_text().splitlines()
    assert lines == ["1,27,2,1", "1,28,3", "1,29,4", "2,27,2,4", "2,28,1", "2,29,3"]


def test_the_ids_map_back_to_our_leave_one_out_split(tmp_path):
    """Every user's days, read back through the two maps, are its time-ordered items: training, valid, test."""
    rows = [
        (f"user{u}", f"item{(u * 7 + k * 3) % 11}", str(100 - k if u % 2 else k))
        for u in range(6)
        for k in range(3 + u)
    ]
    inter = write_inter(tmp_path, rows)
    status, _, stderr = benchmark(["--input", str(inter), "--output", str(tmp_path / "out")])
    assert status == 0, stderr
    users = dict(line.split("\t")[::-1] for line in (tmp_path / "out" / "user_ids.tsv").read_text().splitlines()[1:])
    items = dict(line.split("\t")[::-1] for line in (tmp_path / "out" / "item_ids.tsv").read_text().splitlines()[1:])
    days = {}
    for line in (tmp_path / "out" / "pos_seqs_renbr.txt").read_text().splitlines():
        uid, day, *ids = line.split(",")
        days.setdefault(users[uid], []).append((int(day), [items[i] for i in ids]))
    for u in range(6):
        ordered = [item for _, item, _ in sorted((r for r in rows if r[0] == f"user{u}"), key=lambda r: float(r[2]))]
        assert days[f"user{u}"] == [(12, ordered[:-2]), (13, [ordered[-2]]), (14, [ordered[-1]])]


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (HEADER, [("u", "a", "1"), ("u", "b")], "tiny.inter, line 3: 2 values for 3 header columns"),
        (HEADER, [("u", "a", "1"), ("u", "b", "soon")], "tiny.inter, line 3: column 'timestamp' is declared float"),
        (HEADER, [("u", "a", "1"), ("", "b", "2")], "tiny.inter, line 3: empty value in column 'user_id'"),
        (HEADER, [("u", "a", "1"), ("u", "b", "")], "tiny.inter, line 3: empty value in column 'timestamp'"),
        ("user_id:token\titem_id:token", [("u", "a")], "tiny.inter, line 1: missing column(s) timestamp"),
        (
            "user_id:token\titem_id:token\ttimestamp:token",
            [("u", "a", "1")],
            "tiny.inter, line 1: column 'timestamp' must be of type float, got token",
        ),
        (HEADER, [("u", "a", "1"), ("u", "b", "2")], "tiny.inter: no user has 3 or more interactions"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, header, rows, message):
    inter = write_inter(tmp_path, rows, header=header)
    status, _, stderr = benchmark(["--input", str(inter), "--output", str(tmp_path / "out")])
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ") and message in stderr, stderr
    assert not (tmp_path / "out" / "pos_seqs_renbr.txt").exists()


def test_bad_folders_and_names_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    status, _, stderr = benchmark(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")])
    assert status == 2 and stderr.strip() == f"error: {tmp_path / 'empty'} holds no .inter file"
    write_inter(tmp_path / "two", ROWS, name="a.inter")
    write_inter(tmp_path / "two", ROWS, name="b.inter")
    status, _, stderr = benchmark(["--input", str(tmp_path / "two"), "--output", str(tmp_path / "out")])
    assert status == 2 and "holds several .inter files (a.inter, b.inter): name one" in stderr
    status, _, stderr = benchmark(["--input", str(tmp_path / "missing.inter"), "--output", str(tmp_path / "out")])
    assert status == 2 and stderr.strip() == f"error: atomic file not found: {tmp_path / 'missing.inter'}"
    inter = write_inter(tmp_path, ROWS)
    status, _, stderr = benchmark(["--input", str(inter), "--output", str(inter)])
    assert status == 2 and stderr.strip() == f"error: --output {inter} is a file, not a folder"
    status, _, stderr = benchmark(["--input", str(inter), "--output", str(tmp_path / "o"), "--dataset_name", "../x"])
    assert (
        status == 2 and len(stderr.strip().splitlines()) == 1 and "--dataset_name '../x' must be a plain name" in stderr
    )
