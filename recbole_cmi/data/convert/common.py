"""What every converter shares: the options, checked reading, deduplication, k-core filtering, statistics, writing.

A converter is a module with ``DESCRIPTION`` (one line for ``--help``), ``add_arguments(parser)``
(its own options; each option's ``dest`` is a keyword of its ``convert``), and
``convert(input_dir, output, kcore, <its options>, name, overwrite)``, which hands a ``read``
function to :func:`convert_folder`. That checks the shared options (``--output``, ``--name``,
``--kcore``, ``--overwrite``: :func:`target`) and the ``--input`` folder before any file is read,
then ``read(input_dir, **options)`` turns the source into one frame (columns ``user_id``,
``item_id``, ``timestamp``; ids as strings), an optional item -> category series and notes, which
:func:`finish`

1. orders each user's rows by time (users in order of first appearance; equal times keep file order),
2. drops repeated (user, item) pairs, keeping the first occurrence (the earliest one),
3. applies iterative k-core filtering on users and items (k <= 1 disables it),
4. writes ``<output>/<name>.inter`` and, when categories exist, ``<name>.item`` as RecBole atomic files,
5. returns statistics before and after filtering.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.files import write_text
from recbole_cmi.paths import describe_unreadable, plain_name_problem

UNKNOWN_CATEGORY = "other"
SECONDS_PER_DAY = 86_400
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\tcategory:token"

# Strings that pandas (and so RecBole's reader) turns into NaN, so they cannot be token values.
PANDAS_NA_STRINGS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)


@dataclasses.dataclass(frozen=True)
class Statistics:
    users: int
    items: int
    interactions: int
    density: float
    length_mean: float
    length_median: float
    length_max: int
    categories: int | None  # distinct categories among the items present; None without categories


@dataclasses.dataclass
class ConversionResult:
    name: str
    inter_path: Path
    item_path: Path | None
    notes: list[str]
    before: Statistics
    after: Statistics
    kcore: int

    def report(self) -> str:
        label = f"after {self.kcore}-core" if self.kcore > 1 else "written (no k-core)"
        lines = list(self.notes)
        lines.append(format_statistics([("before filtering", self.before), (label, self.after)]))
        written = str(self.inter_path) + (f" and {self.item_path}" if self.item_path else "")
        lines.append(f"wrote {written}")
        return "\n".join(lines)


def require_file(path: Path, what: str) -> Path:
    """``path``, or a one-line error naming it: missing, a folder, a special file or not readable."""
    if not os.path.lexists(path):
        raise DatasetError(f"missing {what}: {path} does not exist")
    problem = describe_unreadable(path, what)
    if problem:
        raise DatasetError(problem)
    return path


def require_dir(input_dir) -> Path:
    """The ``--input`` folder as a Path, or a one-line error naming it."""
    if str(input_dir) == "":
        raise ConfigValueError("--input is empty: give the folder holding the source files")
    path = Path(input_dir)
    if not path.exists():
        raise DatasetError(f"--input folder {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"--input {path} is a file, not a folder (give the folder holding the source files)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DatasetError(f"--input folder {path} is not readable (permissions)")
    return path


def check_kcore(kcore: int) -> int:
    if isinstance(kcore, bool) or not isinstance(kcore, (int, np.integer)):
        raise ConfigValueError(f"--kcore must be a whole number >= 0, got {kcore!r}")
    if kcore < 0:
        raise ConfigValueError(f"--kcore must be >= 0 (0 or 1 disables filtering), got {kcore}")
    return int(kcore)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a conversion writes, under which name, with which k-core (checked by :func:`target`)."""

    output: Path
    name: str
    kcore: int


def target(output, name: str | None = None, kcore: int = 5, overwrite: bool = False) -> Target:
    """The shared options, checked before any input is read (:func:`check_output` for the folder)."""
    kcore = check_kcore(kcore)
    if str(output) == "":
        raise ConfigValueError("--output is empty: give the folder to write, e.g. dataset/<name>")
    output = Path(output)
    name = name or output.resolve().name
    if not name:
        raise ConfigValueError(f"cannot derive a dataset name from output folder {str(output)!r}; pass --name")
    problem = plain_name_problem(name)
    if problem:
        raise ConfigValueError(f"--name {name!r} {problem}")
    check_output(output, name, overwrite)
    return Target(output=output, name=name, kcore=kcore)


def convert_folder(
    read, input_dir, output, kcore: int = 5, name: str | None = None, overwrite: bool = False, **options
) -> ConversionResult:
    """One conversion: check the shared options and ``--input``, ``read(input_dir, **options)``, then :func:`finish`.

    ``read`` checks its own options first and returns ``(frame, categories or None, notes)``.
    """
    where = target(output, name, kcore, overwrite)
    frame, categories, notes = read(require_dir(input_dir), **options)
    return finish(frame, categories, where, notes)


def read_header(path: Path) -> list[str]:
    """Column names of a CSV file; raises for a missing or empty file."""
    require_file(path, "input file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}, line {first_line_not_utf8(path)}: not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from err
    if not first.strip():
        raise DatasetError(f"{path} is empty: expected a header line")
    return [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]


def first_line_not_utf8(path: Path) -> int:
    """The first line of ``path`` that is not UTF-8 (looked up only to name it in an error)."""
    number = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return number


def pick_column(path: Path, header: list[str], aliases: tuple[str, ...]) -> str:
    """The first of ``aliases`` present in ``header`` (sources spell some columns differently)."""
    for name in aliases:
        if name in header:
            return name
    raise DatasetError(
        f"{path}: missing column {' or '.join(repr(a) for a in aliases)}; the header has {', '.join(header)}"
    )


def read_table(
    path: Path,
    ids: tuple[str, ...] = (),
    numbers: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Read the named columns of a CSV file with a header, checking everything on the way.

    ``ids`` must be non-empty token values (read as strings, exactly as written); ``numbers`` are
    parsed as floats, empty cells become NaN (callers decide whether that is allowed), anything
    else that is not a number raises; ``texts`` are read as strings, empty cells as "".
    """
    header = read_header(path)
    wanted = list(dict.fromkeys(ids + numbers + texts))
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}")
    dtype = {c: str for c in ids + texts} | {c: np.float64 for c in numbers}
    # index_col=False: rows with one field more than the header (a trailing comma) must not turn
    # the first column into the index and shift the others.
    options = dict(usecols=wanted, keep_default_na=False, na_values=[""], encoding="utf-8-sig", index_col=False)
    try:
        frame = pd.read_csv(path, dtype=dtype, **options)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}, line {first_line_not_utf8(path)}: not UTF-8 text ({err.reason})") from err
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path}: not a valid CSV file ({str(err).strip()})") from err
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err.strerror or err}") from err
    except ValueError:  # a non-numeric cell: find it and name it
        raw = pd.read_csv(path, dtype=str, **options)
        for column in numbers:
            _raise_on_non_numeric(path, raw[column], column)
        raise
    if frame.empty:
        raise DatasetError(f"{path} has a header but no rows")
    for column in texts:
        frame[column] = frame[column].fillna("")
    for column in ids:
        # Logs of millions of rows repeat a few thousand ids: one string object per cell would cost
        # gigabytes downstream. (Parsing straight to "category" is several times slower.)
        frame[column] = frame[column].astype("category")
    for column in ids:
        check_tokens(path, frame[column], column)
    return frame


def _raise_on_non_numeric(path: Path, values: pd.Series, column: str) -> None:
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{path}, line {row + 2}: column '{column}' must be a number, got {values.iloc[row]!r}")


def line_of(frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> int:
    """File line (header = line 1) of the first row where ``mask`` holds, for a frame read by ``read_table``."""
    return int(frame.index[np.flatnonzero(np.asarray(mask))[0]]) + 2


def require_present(path: Path, frame: pd.DataFrame, column: str) -> None:
    missing = frame[column].isna()
    if missing.any():
        raise DatasetError(f"{path}, line {line_of(frame, missing)}: column '{column}' is empty")


def require_finite(path: Path, frame: pd.DataFrame, column: str) -> None:
    """Every value of a numeric column present and finite."""
    require_present(path, frame, column)
    values = frame[column].to_numpy()
    infinite = ~np.isfinite(values)
    if infinite.any():
        value = values[np.flatnonzero(infinite)[0]]
        raise DatasetError(
            f"{path}, line {line_of(frame, infinite)}: column '{column}' must be a finite number, got {float(value)!r}"
        )


def require_integers(path: Path, frame: pd.DataFrame, column: str, minimum: int | None = None) -> None:
    require_present(path, frame, column)
    values = frame[column].to_numpy()
    bad = ~np.isfinite(values) | (values != np.round(values))
    if minimum is not None:
        bad |= values < minimum
    if bad.any():
        value = values[np.flatnonzero(bad)[0]]
        accepted = "a whole number" + (f" >= {minimum}" if minimum is not None else "")
        raise DatasetError(
            f"{path}, line {line_of(frame, bad)}: column '{column}' must be {accepted}, got {float(value)!r}"
        )


def check_tokens(path: Path, values: pd.Series, column: str) -> None:
    """Reject values that cannot round-trip through a RecBole token column (checked once per distinct value)."""
    if values.isna().any():
        raise DatasetError(f"{path}, line {line_of(values.to_frame(), values.isna())}: column '{column}' is empty")
    for value in pd.unique(values):
        problem = token_problem(value)
        if problem:
            line = line_of(values.to_frame(), values == value)
            raise DatasetError(f"{path}, line {line}: column '{column}' holds {value!r}, which {problem}")


def token_problem(value: str) -> str | None:
    if value.strip() != value or value == "":
        return "is empty or has leading/trailing spaces"
    if any(c in value for c in "\t\r\n"):
        return "contains a tab or line break (the atomic files are tab-separated)"
    if value.startswith('"'):
        return "starts with a quote (RecBole's reader would parse it as a quoted field)"
    if value in PANDAS_NA_STRINGS:
        return "RecBole's reader would take for a missing value"
    return None


def order_and_dedup(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows by user (first appearance), then time, then file order; repeated (user, item) pairs keep the first."""
    user_rank = pd.factorize(frame["user_id"])[0]
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy(), user_rank))
    ordered = frame.iloc[order]
    unique = ordered.drop_duplicates(["user_id", "item_id"], keep="first")
    return unique.reset_index(drop=True), len(ordered) - len(unique)


def kcore_filter(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions, repeatedly, until none is left (k <= 1: no-op)."""
    if k <= 1 or frame.empty:
        return frame
    users, user_index = pd.factorize(frame["user_id"])
    items, item_index = pd.factorize(frame["item_id"])
    keep = np.ones(len(frame), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=len(user_index))
        item_counts = np.bincount(items[keep], minlength=len(item_index))
        kept = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if kept.sum() == keep.sum():
            break
        keep = kept
    return frame[keep].reset_index(drop=True)


def distinct(values: pd.Series) -> np.ndarray:
    """The distinct values in order of first appearance, as plain strings (also for categoricals)."""
    return np.asarray(values.drop_duplicates(), dtype=object)


def statistics(frame: pd.DataFrame, categories: pd.Series | None) -> Statistics:
    lengths = frame.groupby("user_id", sort=False, observed=True).size().to_numpy()
    users, items, n = len(lengths), int(frame["item_id"].nunique()), len(frame)
    n_categories = None
    if categories is not None:
        present = categories.reindex(distinct(frame["item_id"])).fillna(UNKNOWN_CATEGORY)
        n_categories = int(present.nunique())
    return Statistics(
        users=users,
        items=items,
        interactions=n,
        density=n / (users * items) if users and items else 0.0,
        length_mean=float(lengths.mean()) if users else 0.0,
        length_median=float(np.median(lengths)) if users else 0.0,
        length_max=int(lengths.max()) if users else 0,
        categories=n_categories,
    )


def format_statistics(rows: list[tuple[str, Statistics]]) -> str:
    header = ["", "users", "items", "interactions", "density", "len mean", "median", "max", "categories"]
    table = [header]
    for label, s in rows:
        table.append(
            [
                label,
                f"{s.users:,}",
                f"{s.items:,}",
                f"{s.interactions:,}",
                f"{s.density:.4%}",
                f"{s.length_mean:.2f}",
                f"{s.length_median:g}",
                f"{s.length_max:,}",
                "-" if s.categories is None else f"{s.categories:,}",
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    )


def format_timestamps(values: np.ndarray) -> list[str]:
    """Whole seconds without a trailing '.0', other values in Python's shortest exact form."""
    return [str(int(v)) if v.is_integer() else repr(v) for v in values.astype(float).tolist()]


MANIFEST = ".recbole_cmi-convert.json"


def files_we_wrote(output: Path) -> set[str]:
    """The names the converter recorded in ``output``'s manifest (none when there is no manifest)."""
    try:
        return set(json.loads((output / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def check_output(output: Path, name: str, overwrite: bool) -> None:
    """Refuse an ``--output`` folder that cannot be written, or that holds files we did not write (unless ``overwrite``)."""
    if output.exists() and not output.is_dir():
        raise ConfigValueError(f"--output {output} is a file, not a folder")
    existing = next(p for p in (output, *output.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigValueError(f"--output {output} cannot be created: {existing} is a file, not a folder")
    if existing == output and not os.access(output, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigValueError(f"--output {output} is not readable and writable (permissions)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigValueError(f"--output {output} cannot be created: {existing} is not writable (permissions)")
    if not output.is_dir() or overwrite:
        return
    ours = files_we_wrote(output) | {MANIFEST}
    foreign = sorted(p.name for p in output.iterdir() if p.name not in ours)
    if foreign:
        raise ConfigValueError(
            f"--output {output} already holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which "
            f"this converter did not write; choose an empty or new folder, or pass --overwrite to replace "
            f"{name}.inter/.item there (nothing else is touched)"
        )


def write_atomic(
    frame: pd.DataFrame, categories: pd.Series | None, output: Path, name: str
) -> tuple[Path, Path | None]:
    try:
        return _write_atomic(frame, categories, output, name)
    except OSError as err:  # checked up front (check_output), but a disk can fill or a folder change meanwhile
        where = err.filename or output
        raise DatasetError(f"--output {output}: cannot write {where} ({err.strerror or err})") from err


def _write_atomic(
    frame: pd.DataFrame, categories: pd.Series | None, output: Path, name: str
) -> tuple[Path, Path | None]:
    output.mkdir(parents=True, exist_ok=True)
    ours = files_we_wrote(output)
    inter_path = output / f"{name}.inter"
    lines = [INTER_HEADER]
    lines += [
        f"{u}\t{i}\t{t}"
        for u, i, t in zip(
            frame["user_id"].tolist(), frame["item_id"].tolist(), format_timestamps(frame["timestamp"].to_numpy())
        )
    ]
    if categories is None:
        stale = output / f"{name}.item"
        if stale.is_file() and stale.name not in ours:
            raise ConfigValueError(
                f"{stale} was not written by this converter and would no longer match the new items (this "
                f"conversion has no categories); move it away first: files we did not write are never deleted"
            )
        _write_lines(inter_path, lines)
        if stale.is_file():  # ours, from an earlier conversion: its categories would no longer match the items
            stale.unlink()
        _record(output, (ours | {inter_path.name}) - {stale.name})
        return inter_path, None
    _write_lines(inter_path, lines)
    item_path = output / f"{name}.item"
    items = distinct(frame["item_id"])
    item_categories = categories.reindex(items).fillna(UNKNOWN_CATEGORY)
    _write_lines(item_path, [ITEM_HEADER] + [f"{i}\t{c}" for i, c in zip(items.tolist(), item_categories.tolist())])
    _record(output, ours | {inter_path.name, item_path.name})
    return inter_path, item_path


def _record(output: Path, names: set[str]) -> None:
    _write_lines(output / MANIFEST, [json.dumps({"files": sorted(names)})])


def _write_lines(path: Path, lines: list[str]) -> None:
    # An interrupted run never leaves half a file behind.
    write_text(path, "\n".join(lines) + "\n")


def finish(frame: pd.DataFrame, categories: pd.Series | None, where: Target, notes: list[str]) -> ConversionResult:
    """Order, deduplicate, filter, write and measure one converted dataset (see the module docstring).

    Writes only ``<output>/<name>.inter``, ``.item`` and a manifest of what it wrote (``where``, from
    :func:`target`, has refused a folder that holds other files unless ``overwrite``); a file it did
    not write is never deleted.
    """
    if frame.empty:
        raise DatasetError("no interactions to convert (the input holds no positive interactions)")
    if categories is not None:
        for item, category in categories.drop_duplicates().items():
            problem = token_problem(category)
            if problem:
                raise DatasetError(f"category {category!r} (item {item}), which {problem}")
    frame = frame[["user_id", "item_id", "timestamp"]].astype({"user_id": "category", "item_id": "category"})
    frame, duplicates = order_and_dedup(frame)
    notes = notes + [f"dropped {duplicates:,} repeated (user, item) pairs, keeping each pair's first occurrence"]
    before = statistics(frame, categories)
    filtered = kcore_filter(frame, where.kcore)
    if filtered.empty:
        raise DatasetError(
            f"no interactions left after {where.kcore}-core filtering of {before.interactions:,} interactions "
            f"({before.users:,} users, {before.items:,} items); use a smaller --kcore"
        )
    inter_path, item_path = write_atomic(filtered, categories, where.output, where.name)
    return ConversionResult(
        name=where.name,
        inter_path=inter_path,
        item_path=item_path,
        notes=notes,
        before=before,
        after=statistics(filtered, categories),
        kcore=where.kcore,
    )
