"""Checks on RecBole atomic files before RecBole reads them.

RecBole answers a malformed atomic file with a traceback from deep inside pandas or its
``Dataset`` (or silently drops data). ``validate_atomic_files`` reads each file (with pandas'
C reader, values as plain strings) and raises :class:`DatasetError` naming the file, line,
column and what is accepted. Line ends may be ``\n``, ``\r\n`` or ``\r``; lines holding only
spaces are skipped, as pandas (and so RecBole) skips them.

What is an error here: a missing or empty file, a file that is not UTF-8 (or starts with a
byte-order mark, which RecBole would read as part of the first column's name), a header
column that is not ``name:type`` with a RecBole type, a repeated column name, a row with another
number of values than the header, a non-numeric or non-finite value in a ``float`` column, an
empty user, item or time value, a value that starts with a double quote (pandas, which RecBole
reads with, would take it for a quoted field), a non-numeric part in a ``float_seq`` value, a
missing user/item/time column, and a ``load_col`` field that the header lacks.

What is only reported (``logging`` warning, RecBole's behaviour is kept):

* duplicate rows (same user, item and time): RecBole keeps them as repeated interactions unless
  ``rm_dup_inter`` is ``first`` or ``last``;
* users with a single interaction: RecBole's sequential augmentation builds no training or
  evaluation sample from them (there is no history to predict from); ``user_inter_num_interval``
  (e.g. ``"[5,inf)"`` in ``micro_video.yaml``) drops them. If filtering leaves nothing,
  ``pipeline.create_dataset`` raises a :class:`DatasetError` that names the filter settings.
"""

from __future__ import annotations

import csv
import math
import os
from logging import getLogger
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.errors import DatasetError
from recbole_cmi.paths import describe_unreadable

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
SUFFIXES = ("inter", "item", "user")


def parse_header(path: str, header_line: str, sep: str) -> list[tuple[str, str]]:
    fields = []
    for column in header_line.rstrip("\r\n").split(sep):
        name, _, ftype = column.partition(":")
        if not name or ftype not in FIELD_TYPES:
            other = [c for c in (",", ";", "|", " ", "\t") if c != sep and c in header_line]
            hint = f"; the header seems to use {other[0]!r} instead" if sep not in header_line and other else ""
            raise DatasetError(
                f"{path}: header column {column!r} must be 'name:type' with type one of "
                f"{', '.join(FIELD_TYPES)} (field_separator {sep!r}{hint})"
            )
        fields.append((name, ftype))
    names = [name for name, _ in fields]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"{path}: header names column(s) {', '.join(repeated)} more than once")
    return fields


def _read_header(path: str, encoding: str) -> str:
    try:
        with open(path, encoding=encoding) as f:  # universal newlines, as RecBole reads the header
            header = f.readline()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not {encoding} text (byte {err.start}: {err.reason})") from err
    if header.startswith("\ufeff"):
        raise DatasetError(f"{path} starts with a byte-order mark: save it as UTF-8 without BOM")
    return header.rstrip("\n")


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _data_line_numbers(path: str, sep: str, n_fields: int, encoding: str) -> tuple[np.ndarray, bool]:
    """1-based file line numbers of the data rows (blank lines skipped, as pandas does), and
    whether the file holds a double quote at all.

    Raises a DatasetError for the first row whose number of values differs from the header's.
    Counting is vectorised over the raw bytes, so it needs about 3 bytes of memory per byte of file.
    """
    raw = Path(path).read_bytes()
    if b"\r" in raw:  # pandas and RecBole's header reader take \r\n and \r for line ends
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    sep_bytes = sep.encode(encoding)
    if len(sep_bytes) == 1 and sep_bytes != b"\n":
        data = np.frombuffer(raw, dtype=np.uint8)
        ends = np.flatnonzero(data == 10)
        if not raw.endswith(b"\n"):
            ends = np.append(ends, len(raw))
        starts = np.concatenate([[0], ends[:-1] + 1])
        seps = np.flatnonzero(data == sep_bytes[0])
        counts = np.searchsorted(seps, ends) - np.searchsorted(seps, starts)
        del data, seps
    else:  # a multi-character separator: count in Python
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        counts = np.array([line.count(sep_bytes) for line in lines], dtype=np.int64)
        lengths = np.array([len(line) for line in lines], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
        ends = starts + lengths
    blank = np.zeros(len(counts), dtype=bool)
    for line in np.flatnonzero(counts == 0):  # only lines without a separator can be blank
        blank[line] = raw[starts[line] : ends[line]].strip(b" ") == b""
    rows = np.flatnonzero(~blank)
    rows = rows[rows > 0]  # line 0 is the header
    wrong = counts[rows] != n_fields - 1
    if wrong.any():
        line = int(rows[np.flatnonzero(wrong)[0]])
        raise DatasetError(f"{path}, line {line + 1}: {int(counts[line]) + 1} values for {n_fields} header columns")
    return rows + 1, b'"' in raw


def read_atomic_file(
    path: str, sep: str = "\t", encoding: str = "utf-8", seq_sep: str = " "
) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Header and rows (as strings) of one atomic file, with every structural check applied.

    Rows are parsed by pandas' C reader (quoting off, no NA conversion), so files of millions of
    rows are checked in seconds and with about the memory RecBole's own loading needs.
    """
    problem = describe_unreadable(path, "atomic file")
    if problem:
        raise DatasetError(problem)
    header_line = _read_header(path, encoding)
    if not header_line.strip():
        raise DatasetError(f"{path} is empty: expected a header line such as {f'user_id:token{sep}item_id:token'!r}")
    fields = parse_header(path, header_line, sep)
    names = [name for name, _ in fields]
    try:
        line_numbers, has_quote = _data_line_numbers(path, sep, len(fields), encoding)
    except DatasetError as err:
        raise DatasetError(f"{err} ({', '.join(names)})") from None
    if len(line_numbers) == 0:
        raise DatasetError(f"{path} has a header but no rows")
    frame = _read_rows(path, sep, encoding, names)
    if len(frame) != len(line_numbers):  # a blank-line rule we do not mirror: report row numbers instead
        line_numbers = None
    frame.attrs["line_numbers"] = line_numbers
    _check_values(path, frame, fields, has_quote, seq_sep)
    return fields, frame


def _read_rows(path: str, sep: str, encoding: str, names: list[str]) -> pd.DataFrame:
    """The data rows as strings, by pandas' C reader (quoting off, no NA conversion); one DatasetError line if not."""
    try:
        return pd.read_csv(
            path,
            sep=sep,
            header=None,
            skiprows=1,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=True,
            encoding=encoding,
            engine="c" if len(sep) == 1 else "python",
        )
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not {encoding} text ({err.reason} at byte {err.start} of a block)") from err
    except (pd.errors.ParserError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise DatasetError(f"{path}: cannot be parsed as {sep!r}-separated values: {first_line}") from err


def _check_values(path: str, frame: pd.DataFrame, fields, has_quote: bool, seq_sep: str) -> None:
    """What RecBole's reader would trip over in a value: a field longer than the csv module accepts, a leading
    double quote, a ``float`` or ``float_seq`` column holding something else than finite numbers."""
    seq_separator = seq_sep or " "
    # RecBole reads atomic files with pandas' python engine, i.e. the csv module and its field size limit.
    limit = csv.field_size_limit()
    for name, _ in fields:
        lengths = frame[name].str.len().to_numpy()
        if len(lengths) and lengths.max() > limit:
            index = int(lengths.argmax())
            raise DatasetError(
                f"{path}, {_where(frame, index)}: the value in column '{name}' has {int(lengths[index]):,} characters, "
                f"more than the {limit:,} RecBole's reader (Python's csv module) accepts in one field"
            )
    for name, ftype in fields:
        quoted = frame[name].str.startswith('"').to_numpy() if has_quote else np.zeros(0, dtype=bool)
        if quoted.any():
            index = int(np.flatnonzero(quoted)[0])
            raise DatasetError(
                f"{path}, {_where(frame, index)}: value {frame[name].iloc[index]!r} in column '{name}' starts "
                f"with a double quote, which RecBole's reader (pandas) takes for a quoted field: remove the quote"
            )
        if ftype == "float":
            values = frame[name]
            parsed = pd.to_numeric(values.where(values != ""), errors="coerce")
            bad = (parsed.isna() & (values != "")).to_numpy()
            bad |= ~np.isfinite(parsed.fillna(0.0).to_numpy(dtype=float))
            if bad.any():
                index = int(np.flatnonzero(bad)[0])
                raise DatasetError(
                    f"{path}, {_where(frame, index)}: column '{name}' is declared float but holds "
                    f"{values.iloc[index]!r} (a finite number, or empty for a missing value)"
                )
        elif ftype == "float_seq":
            for index, value in enumerate(frame[name]):
                if not all(_finite(part) for part in value.split(seq_separator) if part != ""):
                    raise DatasetError(
                        f"{path}, {_where(frame, index)}: column '{name}' is declared float_seq but holds "
                        f"{value!r} (numbers separated by {seq_separator!r})"
                    )


def _where(frame: pd.DataFrame, index: int) -> str:
    line_numbers = frame.attrs.get("line_numbers")
    return f"line {int(line_numbers[index])}" if line_numbers is not None else f"data row {index + 1}"


def _require_values(path: str, frame: pd.DataFrame, columns) -> None:
    for column in columns:
        empty = (frame[column] == "").to_numpy()
        if empty.any():
            where = _where(frame, int(np.flatnonzero(empty)[0]))
            raise DatasetError(f"{path}, {where}: empty value in column '{column}' ({int(empty.sum())} such rows)")


def _check_load_col(path: str, config, suffix: str, names) -> None:
    load_col = config["load_col"]
    if not isinstance(load_col, dict) or suffix not in load_col or load_col[suffix] == "*":
        return
    missing = [f for f in load_col[suffix] if f not in names]
    if missing:
        raise DatasetError(
            f"{path}: load_col asks for column(s) {', '.join(missing)} that the header lacks "
            f"(header: {', '.join(sorted(names))})"
        )


def _loaded(config, suffix: str) -> bool:
    load_col = config["load_col"]
    return load_col is None or (isinstance(load_col, dict) and suffix in load_col)


def _check_inter_file(path: str, config, fields, frame: pd.DataFrame) -> dict:
    """An interaction file's columns against the config (ids, time, ``load_col``), its empty values, and warnings
    for duplicate rows and single-interaction users; returns its summary (``validate_atomic_files``)."""
    uid, iid, time = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"]
    benchmark = config["benchmark_filename"]
    needs_time = (config["eval_args"] or {}).get("order") == "TO"
    logger = getLogger()
    names = {n for n, _ in fields}
    required = [uid, iid] + ([time] if needs_time and not benchmark else [])
    missing = [f for f in required if f not in names]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; the header has "
            f"{', '.join(sorted(names))} (field names come from USER_ID_FIELD, ITEM_ID_FIELD, TIME_FIELD)"
        )
    types = dict(fields)
    for field in (uid, iid):
        if types[field] != "token":
            raise DatasetError(f"{path}: column '{field}' must be of type token, got {types[field]}")
    if needs_time and not benchmark and types[time] != "float":
        raise DatasetError(f"{path}: column '{time}' must be of type float, got {types[time]}")
    _check_load_col(path, config, "inter", names)
    listed = config["load_col"].get("inter") if isinstance(config["load_col"], dict) else None
    unlisted = [f for f in required if isinstance(listed, list) and f not in listed]
    if unlisted:
        raise DatasetError(
            f"load_col['inter'] = {listed} must include {', '.join(unlisted)} "
            f"(user and item ids, and the time field when eval_args order is TO)"
        )
    _require_values(path, frame, required)
    key = [c for c in (uid, iid, time) if c in names]
    duplicates = int(frame.duplicated(subset=key).sum())
    if duplicates:
        logger.warning(
            f"{path}: {duplicates} duplicate ({', '.join(key)}) rows; RecBole keeps them as repeated "
            f"interactions (rm_dup_inter: first or last removes them)"
        )
    per_user = frame[uid].value_counts()
    singles = int((per_user == 1).sum())
    if singles and not benchmark:
        logger.warning(
            f"{path}: {singles} of {len(per_user)} users have a single interaction; they give no "
            f'training or evaluation sample (user_inter_num_interval, e.g. "[2,inf)", drops them)'
        )
    return {
        "rows": len(frame),
        "users": len(per_user),
        "max_user_rows": int(per_user.max()),
        "columns": len(listed) if isinstance(listed, list) else len(names),
    }


def validate_atomic_files(config) -> dict:
    """Validate ``<data_path>/<dataset>.{inter,item,user}`` against the config's field names.

    Returns ``{inter file: {"rows", "users", "max_user_rows", "columns"}}`` for the interaction
    file(s); ``columns`` counts the columns RecBole will load.
    """
    name = config["dataset"]
    root = config["data_path"]
    sep = config["field_separator"] or "\t"
    encoding = config["encoding"] or "utf-8"
    seq_sep = config["seq_separator"] or " "
    benchmark = config["benchmark_filename"]
    inter_files = (
        [os.path.join(root, f"{name}.{part}.inter") for part in benchmark]
        if benchmark
        else [os.path.join(root, f"{name}.inter")]
    )
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    summary = {}
    for path in inter_files:
        fields, frame = read_atomic_file(path, sep, encoding, seq_sep)
        summary[path] = _check_inter_file(path, config, fields, frame)
    for suffix, id_field in (("item", iid), ("user", uid)):
        path = os.path.join(root, f"{name}.{suffix}")
        if os.path.isfile(path) and _loaded(config, suffix):
            fields, frame = read_atomic_file(path, sep, encoding, seq_sep)
            names = dict(fields)
            if id_field not in names:
                raise DatasetError(f"{path}: missing column '{id_field}' (header: {', '.join(names)})")
            _check_load_col(path, config, suffix, names)
            _require_values(path, frame, [id_field])
    return summary
