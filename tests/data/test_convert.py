"""Converters to RecBole atomic files, on tiny hand-written inputs in the real column formats.

Every expected row below is worked out by hand from the fixtures in tests/fixtures/convert/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import call, one_line_error, verb

from recbole_cmi import progress
from recbole_cmi.data.atomic import read_atomic_file
from recbole_cmi.data.convert import SOURCES, common, inputs, kuairec, microlens, wechat
from recbole_cmi.data.convert.__main__ import main
from recbole_cmi.errors import ConfigValueError, DatasetError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"


def copy_fixture(source: str, tmp_path: Path) -> Path:
    target = tmp_path / f"raw_{source}"
    shutil.copytree(FIXTURES / source, target)
    return target


def inter_rows(result) -> list[tuple[str, str, str]]:
    fields, frame = read_atomic_file(str(result.inter_path))
    assert fields == [("user_id", "token"), ("item_id", "token"), ("timestamp", "float")]
    return list(frame.itertuples(index=False, name=None))


def item_rows(result) -> list[tuple[str, str]]:
    fields, frame = read_atomic_file(str(result.item_path))
    assert fields == [("item_id", "token"), ("category", "token")]
    return list(frame.itertuples(index=False, name=None))


# --- common ---------------------------------------------------------------------------------------


def test_kcore_filter_cascades_until_stable():
    # u3 has 2 items -> dropped; then item c has only u1 -> dropped; then u1 has 1 item -> dropped.
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"],
            "item_id": ["a", "c", "a", "b", "c", "d", "a", "b"],
            "timestamp": [0.0] * 8,
        }
    )
    kept = common.kcore_filter(frame, 2)
    assert list(zip(kept["user_id"], kept["item_id"])) == [("u2", "a"), ("u2", "b"), ("u4", "a"), ("u4", "b")]
    assert common.kcore_filter(frame, 1).equals(frame)
    assert common.kcore_filter(frame, 0).equals(frame)


def test_order_and_dedup_keeps_the_earliest_occurrence():
    frame = pd.DataFrame(
        {"user_id": ["b", "a", "b", "a", "b"], "item_id": ["x", "x", "y", "x", "x"], "timestamp": [5, 3, 1, 2, 9.0]}
    )
    unique, dropped = common.order_and_dedup(frame)
    assert dropped == 2
    assert list(unique.itertuples(index=False, name=None)) == [("b", "y", 1.0), ("b", "x", 5.0), ("a", "x", 2.0)]


def test_statistics_counts_and_lengths():
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "x"], "timestamp": [0.0] * 4})
    stats = common.statistics(frame, pd.Series({"x": "c1", "y": "c1"}))
    assert (stats.users, stats.items, stats.interactions) == (2, 3, 4)
    assert stats.density == pytest.approx(4 / 6)
    assert (stats.length_mean, stats.length_median, stats.length_max) == (2.0, 2.0, 3)
    assert stats.categories == 2  # c1 and 'other' (z has no category)


@pytest.mark.parametrize("value", ["NA", "null", "", " 7", "a\tb", '"q'])
def test_token_problem_rejects_values_recbole_cannot_read_back(value):
    assert inputs.token_problem(value)


def test_negative_kcore_is_a_config_error(tmp_path):
    with pytest.raises(ConfigValueError, match="kcore"):
        microlens.convert(copy_fixture("lens_format", tmp_path), tmp_path / "out" / "ml", kcore=-1)


# --- microlens ------------------------------------------------------------------------------------


def test_microlens_tsv_order_kcore_and_hashtag_categories(tmp_path):
    result = microlens.convert(copy_fixture("lens_format", tmp_path), tmp_path / "out" / "ml", kcore=3, top_tags=2)
    # u5 (2 items) and items 105, 106, 107 (< 3 users) go first; u4 is then left with 104 only.
    # u2's second 103 is a repeat and is dropped; timestamps are positions in each user's line.
    assert inter_rows(result) == [
        ("1", "101", "0"),
        ("1", "102", "1"),
        ("1", "103", "2"),
        ("1", "104", "3"),
        ("2", "102", "0"),
        ("2", "103", "1"),
        ("2", "104", "2"),
        ("2", "101", "3"),
        ("3", "103", "0"),
        ("3", "101", "1"),
        ("3", "102", "2"),
        ("6", "101", "0"),
        ("6", "102", "1"),
        ("6", "104", "2"),
    ]
    # Tag frequencies over titled items: funny 4, cats 3, dogs 2; "# Other" and "# NaN" are ignored.
    assert item_rows(result) == [("101", "funny"), ("102", "cats"), ("103", "funny"), ("104", "other")]
    assert (result.before.users, result.before.items, result.before.interactions) == (6, 7, 20)
    assert (result.after.users, result.after.items, result.after.interactions) == (4, 4, 14)
    assert result.after.categories == 3
    assert result.inter_path == tmp_path / "out" / "ml" / "ml.inter"
    assert "position of the item" in result.report()
    assert "dropped 1 repeated" in result.report()


def test_microlens_top_tags_changes_categories_and_zero_writes_no_item_file(tmp_path):
    raw = copy_fixture("lens_format", tmp_path)
    one = microlens.convert(raw, tmp_path / "one" / "ml", kcore=3, top_tags=1)
    assert item_rows(one) == [("101", "funny"), ("102", "other"), ("103", "funny"), ("104", "other")]
    none = microlens.convert(raw, tmp_path / "one" / "ml", kcore=3, top_tags=0)
    assert none.item_path is None and none.after.categories is None
    assert not (tmp_path / "one" / "ml" / "ml.item").exists()  # the stale one of the first run is gone


def test_microlens_csv_has_real_time_and_is_preferred_to_the_tsv(tmp_path):
    raw = copy_fixture("lens_format", tmp_path)
    (raw / "Tiny_pairs.csv").write_text(
        "userID,videoID,timestamp\n"
        "1,101,1600000300\n"
        "1,102,1600000100\n"
        "2,101,1600000050\n"
        "1,103,1600000200\n"
        "2,102,1600000400\n"
        "2,101,1600000500\n"
        "3,103,1600000000\n"
    )
    result = microlens.convert(raw, tmp_path / "out" / "ml", kcore=2)
    # u3 has one item; dropping it leaves 103 with u1 only, which is dropped in turn.
    # u2's second 101 (later) is the repeat that goes.
    assert inter_rows(result) == [
        ("1", "102", "1600000100"),
        ("1", "101", "1600000300"),
        ("2", "101", "1600000050"),
        ("2", "102", "1600000400"),
    ]
    assert item_rows(result) == [("102", "cats"), ("101", "funny")]
    assert "Tiny_pairs.csv" in result.report()


def test_microlens_csv_accepts_the_100k_header_and_millisecond_times(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "MicroLens-100k_pairs.csv").write_text("user,item,timestamp\n7,1,1583079617520\n7,2,1583079600000\n")
    result = microlens.convert(raw, tmp_path / "out" / "m", kcore=0)
    assert inter_rows(result) == [("7", "2", "1583079600000"), ("7", "1", "1583079617520")]
    assert result.item_path is None


def test_microlens_several_releases_need_a_prefix(tmp_path):
    raw = copy_fixture("lens_format", tmp_path)
    shutil.copy(raw / "Tiny_pairs.tsv", raw / "Other_pairs.tsv")
    with pytest.raises(DatasetError, match="--prefix"):
        microlens.convert(raw, tmp_path / "out" / "ml", kcore=3)
    result = microlens.convert(raw, tmp_path / "out" / "ml", kcore=3, prefix="Tiny")
    assert result.after.interactions == 14


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, r"no \*_pairs.csv or \*_pairs.tsv"),
        ({"X_pairs.tsv": ""}, "X_pairs.tsv is empty"),
        ({"X_pairs.tsv": "1 101 102\n"}, r"X_pairs.tsv, line 1: expected 'user_id<TAB>item"),
        ({"X_pairs.tsv": "1\t101 NA\n"}, "item id 'NA'"),
        ({"X_pairs.csv": ""}, "X_pairs.csv is empty"),
        ({"X_pairs.csv": "userID,videoID,timestamp\n"}, "has a header but no rows"),
        ({"X_pairs.csv": "userID,timestamp\n1,5\n"}, "missing column 'videoID' or 'item'"),
        (
            {"X_pairs.csv": "userID,videoID,timestamp\n1,2,5\n1,3,soon\n"},
            "line 3: column 'timestamp' must be a number, got 'soon'",
        ),
        ({"X_pairs.csv": "userID,videoID,timestamp\n1,2,\n"}, "line 2: column 'timestamp' is empty"),
        ({"X_pairs.csv": "userID,videoID,timestamp\n1,,5\n"}, "line 2: column 'videoID' is empty"),
        ({"X_pairs.tsv": "1\t2\n", "X_titles.csv": "item,name\n2,x\n"}, "X_titles.csv: missing column"),
    ],
)
def test_microlens_input_errors_name_file_line_and_value(tmp_path, files, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    for file_name, text in files.items():
        (raw / file_name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        microlens.convert(raw, tmp_path / "out" / "x", kcore=0)


def test_missing_input_folder_and_kcore_that_removes_everything(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        microlens.convert(tmp_path / "nowhere", tmp_path / "out" / "x")
    with pytest.raises(DatasetError, match="no interactions left after 9-core"):
        microlens.convert(copy_fixture("lens_format", tmp_path), tmp_path / "out" / "x", kcore=9)


# --- wechat ---------------------------------------------------------------------------------------

DAY = 86_400


def test_wechat_any_row_day_timestamps_and_first_manual_tag(tmp_path):
    result = wechat.convert(copy_fixture("wechat", tmp_path), tmp_path / "out" / "wc", kcore=2)
    # timestamp = date_ * 86400 + position among the user's rows of that day in the file; u8's
    # 71474 on day 2 repeats day 1's and is dropped. Every user and item keeps >= 2 rows.
    assert inter_rows(result) == [
        ("8", "71474", str(DAY)),
        ("8", "73916", str(DAY + 1)),
        ("8", "50282", str(2 * DAY)),
        ("11", "71474", str(DAY)),
        ("11", "99999", str(DAY + 1)),
        ("11", "73916", str(2 * DAY)),
        ("11", "50282", str(2 * DAY + 1)),
        ("20", "50282", str(DAY)),
        ("20", "99999", str(3 * DAY)),
        ("20", "73916", str(3 * DAY + 1)),
    ]
    assert item_rows(result) == [("71474", "81"), ("73916", "194"), ("50282", "other"), ("99999", "other")]
    assert result.before == result.after
    assert result.after.categories == 3
    assert "day granularity only" in result.report()


def test_wechat_explicit_actions(tmp_path):
    raw = copy_fixture("wechat", tmp_path)
    result = wechat.convert(raw, tmp_path / "out" / "wc", kcore=0, positive="explicit")
    # like, read_comment, forward, favorite
    assert inter_rows(result) == [
        ("8", "71474", str(DAY)),
        ("11", "71474", str(DAY)),
        ("11", "50282", str(2 * DAY + 1)),
        ("20", "99999", str(3 * DAY)),
    ]
    # With k = 2 only (11, 71474) survives the first round, and then u11 has a single item.
    with pytest.raises(DatasetError, match="no interactions left"):
        wechat.convert(raw, tmp_path / "out" / "wc", kcore=2, positive="explicit")


def test_wechat_play_ratio(tmp_path):
    raw = copy_fixture("wechat", tmp_path)
    full = wechat.convert(raw, tmp_path / "out" / "wc", kcore=0, positive="play")
    # Watched to the end (play / 1000 >= videoplayseconds); feed 99999 has no duration: dropped.
    # u8's full play of 71474 is on day 2 (its second row that day), so that is its timestamp.
    assert inter_rows(full) == [
        ("8", "73916", str(DAY + 1)),
        ("8", "71474", str(2 * DAY + 1)),
        ("11", "71474", str(DAY)),
        ("20", "50282", str(DAY)),
    ]
    assert "2 rows dropped" in full.report()
    third = wechat.convert(raw, tmp_path / "out" / "wc", kcore=0, positive="play", min_play_ratio=0.3)
    # 5 s of 15 and 3 s of 10 now count too: u8's 71474 is its day-1 row, its day-2 row the repeat.
    assert inter_rows(third) == [
        ("8", "71474", str(DAY)),
        ("8", "73916", str(DAY + 1)),
        ("8", "50282", str(2 * DAY)),
        ("11", "71474", str(DAY)),
        ("20", "50282", str(DAY)),
    ]


def test_wechat_without_feed_info_has_no_categories(tmp_path):
    raw = copy_fixture("wechat", tmp_path)
    (raw / "feed_info.csv").unlink()
    result = wechat.convert(raw, tmp_path / "out" / "wc", kcore=2)
    assert result.item_path is None and result.after.interactions == 10
    with pytest.raises(DatasetError, match="missing feed_info.csv"):
        wechat.convert(raw, tmp_path / "out" / "wc", positive="play")


def test_wechat_option_errors(tmp_path):
    raw = copy_fixture("wechat", tmp_path)
    with pytest.raises(ConfigValueError, match="only to --positive play"):
        wechat.convert(raw, tmp_path / "out" / "wc", min_play_ratio=0.5)
    with pytest.raises(ConfigValueError, match="--positive must be one of"):
        wechat.convert(raw, tmp_path / "out" / "wc", positive="some")


HEADER = "userid,feedid,date_,device,read_comment,comment,like,play,stay,click_avatar,forward,follow,favorite\n"


@pytest.mark.parametrize(
    "actions, positive, message",
    [
        (None, "any", "missing WeChat action log"),
        ("", "any", "user_action.csv is empty"),
        ("userid,feedid,device\n1,2,3\n", "any", "missing column.*date_"),
        ("userid,feedid,date_\n1,2,3\n", "explicit", "missing column.*read_comment"),
        (HEADER + "1,2,x,1,0,0,0,0,0,0,0,0,0\n", "any", "line 2: column 'date_' must be a number, got 'x'"),
        (HEADER + "1,2,1.5,1,0,0,0,0,0,0,0,0,0\n", "any", "line 2: column 'date_' must be a whole number >= 0"),
        (HEADER + "1,2,1,1,0,0,2,0,0,0,0,0,0\n", "explicit", "line 2: column 'like' must be 0 or 1, got 2.0"),
        (HEADER + "1,2,1,1,0,0,0,,0,0,0,0,0\n", "play", "line 2: column 'play' is empty"),
    ],
)
def test_wechat_input_errors(tmp_path, actions, positive, message):
    raw = copy_fixture("wechat", tmp_path)
    if actions is None:
        (raw / "user_action.csv").unlink()
    else:
        (raw / "user_action.csv").write_text(actions)
    with pytest.raises(DatasetError, match=message):
        wechat.convert(raw, tmp_path / "out" / "wc", kcore=0, positive=positive)


def test_wechat_feed_info_errors(tmp_path):
    raw = copy_fixture("wechat", tmp_path)
    (raw / "feed_info.csv").write_text("feedid,authorid,videoplayseconds\n71474,1,15\n")
    with pytest.raises(DatasetError, match="feed_info.csv: missing column.*manual_tag_list"):
        wechat.convert(raw, tmp_path / "out" / "wc", kcore=0)
    (raw / "feed_info.csv").write_text("feedid,videoplayseconds,manual_tag_list\n71474,long,81\n")
    with pytest.raises(DatasetError, match="line 2: column 'videoplayseconds' must be a number, got 'long'"):
        wechat.convert(raw, tmp_path / "out" / "wc", kcore=0, positive="play")


# --- kuairec --------------------------------------------------------------------------------------


def test_kuairec_watch_ratio_real_time_and_first_feat(tmp_path):
    result = kuairec.convert(copy_fixture("kuairec", tmp_path), tmp_path / "out" / "kr", kcore=2, matrix="small")
    # Positives: watch_ratio >= 2.0 (2.0 itself included); the row without a timestamp is dropped,
    # u21's second 3649 is a repeat. Item 148 has one user -> dropped, then u21 has one item.
    assert inter_rows(result) == [
        ("14", "3649", "1593898149.479"),
        ("14", "9598", "1593898243.285"),
        ("19", "9598", "1593910800.5"),
        ("19", "3649", "1594000800"),
    ]
    assert item_rows(result) == [("3649", "27"), ("9598", "other")]
    assert (result.before.users, result.before.items, result.before.interactions) == (3, 3, 6)
    assert "1 rows without timestamp or watch_ratio dropped" in result.report()
    assert "dropped 1 repeated" in result.report()


def test_kuairec_min_watch_ratio(tmp_path):
    result = kuairec.convert(
        copy_fixture("kuairec", tmp_path), tmp_path / "out" / "kr", kcore=0, matrix="small", min_watch_ratio=2.5
    )
    # Only the two 2.76 rows pass; u21's is its later 3649 row, since the earlier one (2.30) is not positive.
    assert inter_rows(result) == [("19", "3649", "1594000800"), ("21", "3649", "1594083600")]


MATRIX_HEADER = "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio\n"


@pytest.mark.parametrize(
    "matrix, categories, message",
    [
        (None, None, "missing KuaiRec interaction matrix"),
        ("", None, "small_matrix.csv is empty"),
        ("user_id,video_id,timestamp\n1,2,3\n", None, "missing column.*watch_ratio"),
        (MATRIX_HEADER + "1,2,3,4,t,d,noon,2.5\n", None, "line 2: column 'timestamp' must be a number, got 'noon'"),
        (MATRIX_HEADER + "1,2,3,4,t,d,5,inf\n", None, "line 2: column 'watch_ratio' must be finite"),
        (MATRIX_HEADER + "1,2,3,4,t,d,5,2.5\n", "video_id,feat\n2,8\n", "line 2: column 'feat' must be a list"),
    ],
)
def test_kuairec_input_errors(tmp_path, matrix, categories, message):
    raw = copy_fixture("kuairec", tmp_path)
    if matrix is None:
        (raw / "small_matrix.csv").unlink()
    else:
        (raw / "small_matrix.csv").write_text(matrix)
    if categories is not None:
        (raw / "item_categories.csv").write_text(categories)
    with pytest.raises(DatasetError, match=message):
        kuairec.convert(raw, tmp_path / "out" / "kr", kcore=0, matrix="small")


# --- command line ---------------------------------------------------------------------------------


def test_cli_converts_and_prints_statistics(tmp_path, capsys):
    raw = copy_fixture("kuairec", tmp_path)
    code = main(
        ["kuairec", "--input", str(raw), "--output", str(tmp_path / "ds" / "kr"), "--kcore", "2", "--matrix", "small"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "after 2-core" in out and "interactions" in out and "categories" in out
    assert (tmp_path / "ds" / "kr" / "kr.inter").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["kuairec", "--input", "{raw}", "--output", "{out}"], "missing KuaiRec interaction matrix"),
        (["wechat", "--input", "{raw}", "--output", "{out}", "--min_play_ratio", "0.5"], "only to --positive play"),
    ],
)
def test_cli_reports_one_error_line_and_fails(tmp_path, capsys, argv, message):
    raw = copy_fixture("kuairec", tmp_path)  # no big_matrix.csv, no user_action.csv
    argv = [a.format(raw=raw, out=tmp_path / "ds" / "x") for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.e2e
def test_module_entry_point_exit_code(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recbole_cmi.data.convert",
            "microlens",
            "--input",
            str(tmp_path / "none"),
            "--output",
            "x",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: --input folder {tmp_path / 'none'} does not exist"]


# --- the command line's errors: one line, exit status 2, for every source ----------------------------

# source -> (fixture folder, extra arguments for a valid run, its interaction file)
VALID = {
    "microlens": ("lens_format", [], "Tiny_pairs.tsv"),
    "wechat": ("wechat", [], "user_action.csv"),
    "kuairec": ("kuairec", ["--matrix", "small"], "small_matrix.csv"),
}


def test_every_source_of_the_package_is_tested_here():
    assert set(VALID) == set(SOURCES)


CONVERT = verb("convert")  # python -m recbole_cmi convert ...


def strings(argv) -> list[str]:
    return [str(a) for a in argv]


def valid_args(source, tmp_path):
    fixture, extra, _ = VALID[source]
    # --kcore 0: the default 5-core would leave nothing of the tiny fixtures (a later --kcore wins)
    return ["--input", copy_fixture(fixture, tmp_path), "--output", tmp_path / "ds" / "out", "--kcore", "0", *extra]


@pytest.mark.parametrize("source", SOURCES)
def test_help_at_every_level(source):
    code, out, _ = call(main, strings(["--help"]))
    assert code == 0 and all(name in out for name in SOURCES)
    code, out, _ = call(CONVERT, strings(["--help"]))
    assert code == 0 and all(name in out for name in SOURCES)
    code, out, _ = call(main, strings([source, "--help"]))
    assert code == 0
    assert all(option in out for option in ("--input", "--output", "--name", "--overwrite", "--kcore"))
    assert f"{source} options" in out  # the source's own options, in a group of their own
    code, out, _ = call(CONVERT, strings([source, "-h"]))
    assert code == 0 and "--kcore" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["required: source"]),
        (["bogus", "--input", "x", "--output", "y"], ["invalid choice: 'bogus'", "microlens"]),
    ],
)
def test_a_missing_or_unknown_source_is_one_line(argv, expected):
    code, _, err = call(main, strings(argv))
    one_line_error(code, err, *expected)
    code, _, err = call(CONVERT, strings(argv))
    one_line_error(code, err, *expected)


def _drop(args, option, with_value=True):
    at = args.index(option)
    return args[:at] + args[at + 1 + with_value :]


def _set(args, option, value):
    at = args.index(option)
    return args[: at + 1] + [value] + args[at + 2 :]


# kind -> (how to spoil a valid argument list, what the line names); {raw}/{out} stand for --input/--output.
BAD_ARGUMENTS = {
    "missing --input": (lambda a, raw, out: _drop(a, "--input"), ["required", "--input"]),
    "missing --output": (lambda a, raw, out: _drop(a, "--output"), ["required", "--output"]),
    "--output without a value": (lambda a, raw, out: _drop(a, "--output") + ["--output"], ["argument --output"]),
    "unknown argument": (lambda a, raw, out: a + ["--bogus", "1"], ["unrecognized arguments: --bogus 1"]),
    "empty --input": (lambda a, raw, out: _set(a, "--input", ""), ["--input is empty"]),
    "--input does not exist": (lambda a, raw, out: _set(a, "--input", f"{raw}-nowhere"), ["--input folder", "nowhere"]),
    "--input is a file": (lambda a, raw, out: _set(a, "--input", f"{raw}/{{main}}"), ["--input", "is a file"]),
    "empty --output": (lambda a, raw, out: _set(a, "--output", ""), ["--output is empty"]),
    "--output is a file": (lambda a, raw, out: _set(a, "--output", f"{raw}/{{main}}"), ["--output", "is a file"]),
    "--output under a file": (
        lambda a, raw, out: _set(a, "--output", f"{raw}/{{main}}/sub"),
        ["--output", "cannot be created", "{main} is a file"],
    ),
    "--output holds other files": (lambda a, raw, out: _set(a, "--output", str(raw)), ["did not write", "--overwrite"]),
    "--kcore not a number": (lambda a, raw, out: a + ["--kcore", "five"], ["argument --kcore", "'five'"]),
    "negative --kcore": (lambda a, raw, out: a + ["--kcore", "-1"], ["--kcore must be >= 0", "-1"]),
    "--name not plain": (lambda a, raw, out: a + ["--name", "../up"], ["--name '../up'", "plain name"]),
}


@pytest.mark.parametrize("kind", BAD_ARGUMENTS)
@pytest.mark.parametrize("source", SOURCES)
def test_a_bad_shared_argument_is_one_line_and_nothing_is_written(source, kind, tmp_path):
    args = valid_args(source, tmp_path)
    raw, out, main_file = args[1], args[3], VALID[source][2]
    spoil, expected = BAD_ARGUMENTS[kind]
    argv = [str(a).replace("{main}", main_file) for a in spoil([str(a) for a in args], raw, out)]
    before = sorted(p.name for p in raw.iterdir())
    code, _, err = call(main, strings([source, *argv]))
    one_line_error(code, err, *[e.replace("{main}", main_file) for e in expected])
    assert not out.exists() and sorted(p.name for p in raw.iterdir()) == before


@pytest.mark.parametrize("source", SOURCES)
def test_the_shared_arguments_are_checked_before_the_input(source, tmp_path):
    args = _set(valid_args(source, tmp_path), "--input", tmp_path / "nowhere")
    code, _, err = call(main, strings([source, *args, "--kcore", "-3"]))
    one_line_error(code, err, "--kcore must be >= 0")


@pytest.mark.parametrize("source", SOURCES)
def test_an_output_folder_that_cannot_be_written_is_one_line(source, tmp_path, monkeypatch):
    args = valid_args(source, tmp_path)
    monkeypatch.setattr(inputs.os, "access", lambda path, mode: Path(path) != tmp_path)
    code, _, err = call(main, strings([source, *args]))
    one_line_error(code, err, f"--output {args[3]} cannot be created: {tmp_path} is not writable")
    monkeypatch.undo()

    def refuse(path, text):  # what a full disk or a folder made read-only meanwhile does
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(common, "write_text", refuse)
    code, _, err = call(main, strings([source, *args]))
    one_line_error(code, err, f"--output {args[3]}: cannot write", "Permission denied")


# source -> [(arguments added to a valid run, what the line names)]
BAD_OPTIONS = {
    "microlens": [
        (["--top_tags", "-1"], "--top_tags must be >= 0, got -1"),
        (["--top_tags", "many"], "argument --top_tags: invalid int value: 'many'"),
        (["--prefix", ""], "--prefix is empty"),
        (["--prefix", "Other"], "no Other_pairs.csv or Other_pairs.tsv"),
    ],
    "wechat": [
        (["--positive", "some"], "argument --positive: invalid choice: 'some'"),
        (["--min_play_ratio", "half"], "argument --min_play_ratio: invalid float value: 'half'"),
        (["--min_play_ratio", "0.5"], "--min_play_ratio applies only to --positive play"),
        (["--positive", "play", "--min_play_ratio", "-1"], "--min_play_ratio must be a number >= 0, got -1"),
        (["--positive", "play", "--min_play_ratio", "nan"], "--min_play_ratio must be a number >= 0, got nan"),
    ],
    "kuairec": [
        (["--matrix", "medium"], "argument --matrix: invalid choice: 'medium'"),
        (["--min_watch_ratio", "x"], "argument --min_watch_ratio: invalid float value: 'x'"),
        (["--min_watch_ratio", "inf"], "--min_watch_ratio must be a finite number, got inf"),
    ],
}


@pytest.mark.parametrize(
    "source, extra, expected", [(s, extra, expected) for s, cases in BAD_OPTIONS.items() for extra, expected in cases]
)
def test_a_bad_source_option_is_one_line(source, extra, expected, tmp_path):
    args = valid_args(source, tmp_path)
    code, _, err = call(main, strings([source, *args, *extra]))
    one_line_error(code, err, expected)
    assert not args[3].exists()


@pytest.mark.parametrize("source", SOURCES)
def test_an_input_folder_without_its_file_names_the_file(source, tmp_path):
    args = valid_args(source, tmp_path)
    main_path = args[1] / VALID[source][2]
    expected = {
        "microlens": f"no *_pairs.csv or *_pairs.tsv in {args[1]}",
        "wechat": f"missing WeChat action log: {main_path} does not exist",
        "kuairec": f"missing KuaiRec interaction matrix: {main_path} does not exist",
    }[source]
    main_path.unlink()
    code, _, err = call(main, strings([source, *args]))
    one_line_error(code, err, expected)
    main_path.mkdir()  # a folder where the file should be
    code, _, err = call(main, strings([source, *args]))
    one_line_error(code, err, f"{main_path} is a folder, not a file")


# source -> (file, a malformed row appended to it, what the line names besides file and line)
MALFORMED_ROWS = {
    "microlens": ("Tiny_pairs.tsv", "7\t101 NA\n", "item id 'NA'"),
    "wechat": ("user_action.csv", "8,71474,x,1,0,0,1,5000,5366,0,0,0,0\n", "column 'date_' must be a number, got 'x'"),
    "kuairec": ("small_matrix.csv", "14,148,1,1,t,d,noon,2.5\n", "column 'timestamp' must be a number, got 'noon'"),
}


@pytest.mark.parametrize("source", SOURCES)
def test_a_malformed_row_names_file_and_line(source, tmp_path):
    args = valid_args(source, tmp_path)
    file_name, row, expected = MALFORMED_ROWS[source]
    path = args[1] / file_name
    lines = len(path.read_text().splitlines())
    with open(path, "a") as f:
        f.write(row)
    code, _, err = call(main, strings([source, *args]))
    one_line_error(code, err, f"{path}, line {lines + 1}: {expected}")


@pytest.mark.parametrize(
    "file_name, data, line",
    [
        ("X_pairs.tsv", b"1\t2 3\n2\t3 \xff4\n", 2),
        ("X_pairs.csv", b"\xffuserID,videoID,timestamp\n1,2,3\n", 1),
        ("X_pairs.csv", b"userID,videoID,timestamp\n1,2,3\n1,\xe92,4\n", 3),
    ],
)
def test_a_line_that_is_not_utf8_is_named(tmp_path, file_name, data, line):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / file_name).write_bytes(data)
    code, _, err = call(main, strings(["microlens", "--input", raw, "--output", tmp_path / "out", "--kcore", "0"]))
    one_line_error(code, err, f"{raw / file_name}, line {line}: not UTF-8 text")


def test_rows_with_a_trailing_comma_keep_their_columns(tmp_path):
    """One field more than the header on every row must not make the first column an index and shift the rest."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["1,10,0,0,t,d,300,2.5,", "2,10,0,0,t,d,200,3.0,", "1,11,0,0,t,d,100,2.0,"]  # pandas shifted these
    (raw / "small_matrix.csv").write_text(MATRIX_HEADER + "\n".join(rows) + "\n")
    result = kuairec.convert(raw, tmp_path / "out" / "x", kcore=0, matrix="small")
    assert inter_rows(result) == [("1", "11", "100"), ("1", "10", "300"), ("2", "10", "200")]


# source -> (arguments after a valid run's, the exact .inter and .item text), worked out from the fixtures
# as in the tests above: the bytes every version of the converters must keep writing.
EXACT_FILES = {
    "microlens": (
        ["--kcore", "3", "--top_tags", "2"],
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "1\t101\t0\n1\t102\t1\n1\t103\t2\n1\t104\t3\n2\t102\t0\n2\t103\t1\n2\t104\t2\n2\t101\t3\n"
        "3\t103\t0\n3\t101\t1\n3\t102\t2\n6\t101\t0\n6\t102\t1\n6\t104\t2\n",
        "item_id:token\tcategory:token\n101\tfunny\n102\tcats\n103\tfunny\n104\tother\n",
    ),
    "wechat": (
        ["--kcore", "0", "--positive", "explicit"],
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "8\t71474\t86400\n11\t71474\t86400\n11\t50282\t172801\n20\t99999\t259200\n",
        "item_id:token\tcategory:token\n71474\t81\n50282\tother\n99999\tother\n",
    ),
    "kuairec": (
        ["--kcore", "2"],
        "user_id:token\titem_id:token\ttimestamp:float\n"
        "14\t3649\t1593898149.479\n14\t9598\t1593898243.285\n19\t9598\t1593910800.5\n19\t3649\t1594000800\n",
        "item_id:token\tcategory:token\n3649\t27\n9598\tother\n",
    ),
}


@pytest.mark.parametrize("source", SOURCES)
def test_the_command_line_writes_exactly_these_bytes(source, tmp_path):
    args = valid_args(source, tmp_path)
    extra, inter, item = EXACT_FILES[source]
    code, out, err = call(main, strings([source, *args, *extra]))
    assert (code, err) == (0, "")
    assert out.splitlines()[-2] == f"wrote {args[3] / 'out.inter'} and {args[3] / 'out.item'}"
    assert (args[3] / "out.inter").read_bytes() == inter.encode()
    assert (args[3] / "out.item").read_bytes() == item.encode()
    assert sorted(p.name for p in args[3].iterdir()) == [inputs.MANIFEST, "out.inter", "out.item"]


# --- the output loads in RecBole ------------------------------------------------------------------


@pytest.mark.e2e
def test_converted_microlens_trains_sasrec_for_one_epoch(tmp_path):
    """The output loads through validate_atomic_files and RecBole, with properties/dataset/microlens.yaml."""
    from recbole_cmi.quick_start import run_recbole_cmi

    raw = tmp_path / "raw"
    raw.mkdir()
    # 30 users x 8 of 40 items (7 is coprime with 40, so no repeats), 5 to 7 users per item: 5-core keeps all.
    lines = [f"{u}\t" + " ".join(str(100 + (3 * u + 7 * j) % 40) for j in range(8)) for u in range(1, 31)]
    (raw / "Toy_pairs.tsv").write_text("\n".join(lines) + "\n")
    tags = ["# music", "# food # music", "# games", ""]
    (raw / "Toy_titles.csv").write_text(
        "item,title\n" + "".join(f"{100 + i},clip {i} {tags[i % 4]}\n" for i in range(40))
    )
    result = microlens.convert(raw, tmp_path / "data" / "microlens")
    assert (result.after.users, result.after.items, result.after.categories) == (30, 40, 3)
    outcome = run_recbole_cmi(
        "SASRec",
        "microlens",
        config_dict={
            "data_path": str(tmp_path / "data"),
            "checkpoint_dir": str(tmp_path / "saved"),
            "epochs": 1,
            "hidden_size": 16,
            "inner_size": 32,
            "n_layers": 1,
            "n_heads": 1,
            "MAX_ITEM_LIST_LENGTH": 10,
            "train_batch_size": 64,
            "state": "ERROR",
            "gpu_id": "",
            "topk": [5, 10],
            "valid_metric": "NDCG@10",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "category"]},
            "user_inter_num_interval": "[3,inf)",
        },
    )
    assert outcome["config"]["item_inter_num_interval"] == "[5,inf)"  # from the dataset yaml
    assert 0.0 <= outcome["test_result"]["recall@10"] <= 1.0


# --- progress: a line per long step on a terminal, nothing else ----------------------------------------

# source -> the steps the EXACT_FILES run reports, in order
PROGRESS_STEPS = {
    "microlens": [
        "reading Tiny_pairs.tsv",
        "reading Tiny_titles.csv",
        "ordering and deduplicating",
        "3-core filtering",
        "writing out.inter and .item",
    ],
    "wechat": [
        "reading user_action.csv",
        "reading feed_info.csv",
        "ordering and deduplicating",
        "writing out.inter and .item",
    ],
    "kuairec": [
        "reading small_matrix.csv",
        "reading item_categories.csv",
        "ordering and deduplicating",
        "2-core filtering",
        "writing out.inter and .item",
    ],
}


@pytest.mark.parametrize("source", SOURCES)
def test_a_terminal_gets_a_line_per_step_and_the_rest_is_unchanged(source, tmp_path, monkeypatch):
    args = valid_args(source, tmp_path)
    extra, inter, item = EXACT_FILES[source]
    argv = strings([source, *args, *extra])
    code, plain_out, plain_err = call(main, argv)
    assert (code, plain_err) == (0, "")  # not a terminal: no progress at all

    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    code, out, err = call(main, argv)  # into the same folder: the converter may replace what it wrote
    assert code == 0
    took = re.compile(r"took \d+\.\d s")
    assert took.fullmatch(out.splitlines()[-1]) and took.fullmatch(plain_out.splitlines()[-1])
    assert out.splitlines()[:-1] == plain_out.splitlines()[:-1]  # stdout as without a terminal, but the seconds
    lines = err.splitlines()
    assert [line.partition(" ... ")[0] for line in lines] == PROGRESS_STEPS[source]
    assert all(re.fullmatch(r".+ \.\.\. \d+\.\d s", line) for line in lines), lines
    assert (args[3] / "out.inter").read_bytes() == inter.encode()
    assert (args[3] / "out.item").read_bytes() == item.encode()


def test_a_step_that_fails_on_a_terminal_leaves_the_error_its_own_line(tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    raw = copy_fixture("kuairec", tmp_path)
    (raw / "small_matrix.csv").write_text(MATRIX_HEADER + "1,10,0,0,t,d,three,2.5\n")
    code, _, err = call(main, strings(["kuairec", "--input", raw, "--output", tmp_path / "out", "--matrix", "small"]))
    assert code == 2
    assert err.splitlines()[0] == "reading small_matrix.csv ..."
    one_line_error(code, "\n".join(err.splitlines()[1:]), "small_matrix.csv, line 2", "'timestamp' must be a number")
