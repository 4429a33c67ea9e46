"""recbole_cmi.data.atomic: every malformed atomic file is a DatasetError naming file, line and rule."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbole_cmi.data.atomic import read_atomic_file, validate_atomic_files
from recbole_cmi.errors import DatasetError

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ROWS = [f"u{u}\tv{i}\t{10 * u + i}" for u in (1, 2, 3) for i in (1, 2, 3)]


class StubConfig(dict):
    """The keys validate_atomic_files reads; a missing key is None, as in RecBole's Config."""

    def __missing__(self, key):
        return None


def stub_config(root, name="d", **overrides):
    config = StubConfig(
        dataset=name,
        data_path=str(Path(root) / name),
        field_separator="\t",
        USER_ID_FIELD="user_id",
        ITEM_ID_FIELD="item_id",
        TIME_FIELD="timestamp",
        eval_args={"order": "TO"},
        load_col={"inter": ["user_id", "item_id", "timestamp"]},
    )
    config.update(overrides)
    return config


def write(root, text, name="d", suffix="inter", mode="w"):
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{suffix}"
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def lines(*rows):
    return "".join(row + "\n" for row in rows)


def test_a_valid_file_passes_and_is_summarised(tmp_path):
    path = write(tmp_path, lines(HEADER, *ROWS))
    summary = validate_atomic_files(stub_config(tmp_path))
    assert summary == {str(path): {"rows": 9, "users": 3, "max_user_rows": 3, "columns": 3}}
    fields, frame = read_atomic_file(str(path))
    assert fields == [("user_id", "token"), ("item_id", "token"), ("timestamp", "float")]
    assert frame.shape == (9, 3)


def test_line_ends_and_blank_lines_are_read_as_recbole_reads_them(tmp_path):
    write(tmp_path, lines(HEADER, *ROWS).replace("\n", "\r\n"))  # RecBole reads CRLF files fine
    assert next(iter(validate_atomic_files(stub_config(tmp_path)).values()))["rows"] == 9
    write(tmp_path, lines(HEADER, ROWS[0], "", "   ", *ROWS[1:], "u9\tv9\tsoon"))
    with pytest.raises(DatasetError, match=r"line 13: column 'timestamp' is declared float but holds 'soon'"):
        validate_atomic_files(stub_config(tmp_path))  # blank lines are skipped but still counted


MALFORMED = [
    ("missing", None, "atomic file not found"),
    ("empty", "", "is empty: expected a header line"),
    ("blank header", lines("", *ROWS), "is empty"),
    ("header only", lines(HEADER), "has a header but no rows"),
    ("bad type", lines("user_id:token\titem_id:tokn\ttimestamp:float", *ROWS), "header column 'item_id:tokn'"),
    ("no type", lines("user_id\titem_id:token\ttimestamp:float", *ROWS), "header column 'user_id' must be"),
    ("comma separated", lines(*(r.replace("\t", ",") for r in [HEADER, *ROWS])), "seems to use ','"),
    ("repeated column", lines("user_id:token\tuser_id:token\ttimestamp:float", *ROWS), "more than once"),
    ("too few values", lines(HEADER, *ROWS[:3], "u9\tv9", *ROWS[3:]), "line 5: 2 values for 3 header columns"),
    ("too many values", lines(HEADER, "u9\tv9\t1\t2", *ROWS), "line 2: 4 values for 3 header columns"),
    ("text timestamp", lines(HEADER, *ROWS[:2], "u9\tv9\tmonday"), "line 4: column 'timestamp' is declared float"),
    ("nan timestamp", lines(HEADER, "u9\tv9\tnan", *ROWS), "line 2: column 'timestamp' is declared float"),
    ("inf timestamp", lines(HEADER, "u9\tv9\tinf", *ROWS), "holds 'inf'"),
    ("empty timestamp", lines(HEADER, *ROWS, "u9\tv9\t"), "line 11: empty value in column 'timestamp'"),
    ("empty user", lines(HEADER, "\tv9\t5", *ROWS), "line 2: empty value in column 'user_id' (1 such rows)"),
    ("no item column", lines("user_id:token\ttimestamp:float", "u1\t1"), "missing column(s) item_id"),
    ("no time column", lines("user_id:token\titem_id:token", "u1\tv1"), "missing column(s) timestamp"),
    ("float user id", lines("user_id:float\titem_id:token\ttimestamp:float", "1\tv1\t1"), "must be of type token"),
    ("token time", lines("user_id:token\titem_id:token\ttimestamp:token", *ROWS), "must be of type float"),
    ("byte-order mark", "\ufeff" + lines(HEADER, *ROWS), "byte-order mark"),
    ("not utf-8", b"user_id:token\titem_id:token\ttimestamp:float\nu\xff\tv1\t1\n", "is not utf-8 text"),
]


@pytest.mark.parametrize(("case", "content", "fragment"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_inter_file_is_a_dataset_error(tmp_path, case, content, fragment):
    if content is not None:
        write(tmp_path, content, mode="wb" if isinstance(content, bytes) else "w")
    else:
        (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError) as err:
        validate_atomic_files(stub_config(tmp_path))
    message = str(err.value)
    assert fragment in message and str(tmp_path / "d" / "d.inter") in message and "\n" not in message


def test_load_col_must_name_existing_and_required_columns(tmp_path):
    write(tmp_path, lines(HEADER, *ROWS))
    config = stub_config(tmp_path, load_col={"inter": ["user_id", "item_id", "timestamp", "rating"]})
    with pytest.raises(DatasetError, match="load_col asks for column.s. rating that the header lacks"):
        validate_atomic_files(config)
    config = stub_config(tmp_path, load_col={"inter": ["user_id", "item_id"]})
    with pytest.raises(DatasetError, match=r"load_col\['inter'\] = .* must include timestamp"):
        validate_atomic_files(config)
    assert validate_atomic_files(stub_config(tmp_path, load_col={"inter": ["user_id", "item_id"]}, eval_args={}))


def test_item_file_is_checked_only_when_recbole_loads_it(tmp_path):
    write(tmp_path, lines(HEADER, *ROWS))
    write(tmp_path, lines("category:token", "c1"), suffix="item")
    validate_atomic_files(stub_config(tmp_path))  # load_col has no 'item': RecBole does not read it
    with pytest.raises(DatasetError, match=r"d\.item: missing column 'item_id'"):
        validate_atomic_files(stub_config(tmp_path, load_col=None))
    write(tmp_path, lines("item_id:token\tcategory:token", "v1\tc1", "\tc2"), suffix="item")
    with pytest.raises(DatasetError, match=r"d\.item, line 3: empty value in column 'item_id'"):
        validate_atomic_files(stub_config(tmp_path, load_col=None))


def test_benchmark_files_are_each_validated(tmp_path):
    for part in ("train", "valid"):
        write(
            tmp_path,
            lines("user_id:token\titem_id:token\titem_id_list:token_seq", "u1\tv2\tv1"),
            suffix=f"{part}.inter",
        )
    config = stub_config(tmp_path, benchmark_filename=["train", "valid", "test"], load_col=None)
    with pytest.raises(DatasetError, match=r"atomic file not found: .*d\.test\.inter"):
        validate_atomic_files(config)


def test_duplicates_are_reported_and_kept(tmp_path, caplog):
    write(tmp_path, lines(HEADER, *ROWS, ROWS[0], ROWS[1]))
    with caplog.at_level(logging.WARNING):
        summary = validate_atomic_files(stub_config(tmp_path))
    assert "2 duplicate (user_id, item_id, timestamp) rows; RecBole keeps them as repeated interactions" in caplog.text
    assert "rm_dup_inter" in caplog.text
    assert next(iter(summary.values()))["rows"] == 11


def test_single_interaction_users_are_reported(tmp_path, caplog):
    write(tmp_path, lines(HEADER, *ROWS, "lonely\tv1\t5"))
    with caplog.at_level(logging.WARNING):
        validate_atomic_files(stub_config(tmp_path))
    assert "1 of 4 users have a single interaction; they give no training or evaluation sample" in caplog.text


# --- property: malformed input is a DatasetError or a valid load, never anything else -----------

NAMES = st.sampled_from(["user_id", "item_id", "timestamp", "rating", "", "a:b", "x y"])
TYPES = st.sampled_from(["token", "float", "token_seq", "float_seq", "", "int", "TOKEN", "float "])
VALUES = st.one_of(
    st.sampled_from(["u1", "u2", "v1", "v2", "", " ", "1", "2.5", "-3", "1e3", "nan", "inf", "NaN", "x\ty", '"q']),
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
)


@st.composite
def atomic_text(draw):
    if draw(st.booleans()):  # mostly a plausible header, sometimes a random one
        columns = draw(st.lists(st.tuples(NAMES, TYPES), min_size=1, max_size=5))
        header = "\t".join(f"{n}:{t}" for n, t in columns)
    else:
        header = draw(st.sampled_from([HEADER, "user_id:token\titem_id:token", HEADER + "\trating:float"]))
    width = header.count("\t") + 1
    rows = draw(
        st.lists(
            st.lists(VALUES, min_size=max(0, width - 1), max_size=width + 1).map("\t".join),
            max_size=8,
        )
    )
    text = "\n".join([header, *rows])
    ending = draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))
    return draw(
        st.sampled_from([text + ending, "", "\n", header + "\n"])
        if draw(st.integers(0, 9)) == 0
        else st.just(text + ending)
    )


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=atomic_text(), raw=st.binary(max_size=40), use_raw=st.integers(0, 9))
def test_any_inter_file_is_either_valid_or_a_dataset_error(text, raw, use_raw):
    root = tempfile.mkdtemp(prefix="atomic-")
    try:
        if use_raw == 0:
            write(root, raw, mode="wb")
        else:
            write(root, text)
        try:
            summary = validate_atomic_files(stub_config(root))
        except DatasetError as err:
            assert str(err) and "\n" not in str(err)
        else:
            assert all(s["rows"] >= 1 and s["users"] >= 1 for s in summary.values())
    finally:
        shutil.rmtree(root, ignore_errors=True)
