"""What every converter takes in, checked: the shared options before any file is read, then the source files.

:func:`target` checks ``--output``, ``--name``, ``--kcore`` and ``--overwrite`` (:func:`check_output`: an output
folder holding files the converter did not write, as its manifest :data:`MANIFEST` records, is refused unless
``--overwrite``), :func:`require_dir` the ``--input`` folder and :func:`require_file` each source file. Then
:func:`read_table` reads the named columns of a CSV file, and the ``require_*`` checks and :func:`token_problem`
refuse a cell that cannot be used, each with one line naming the file, the line and the column.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cmi.errors import ConfigValueError, DatasetError
from recbole_cmi.paths import describe_unreadable, plain_name_problem
from recbole_cmi.progress import step

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

# Lists the files the converter wrote into an output folder: any other file there is never deleted, and is only
# written over with --overwrite.
MANIFEST = ".recbole_cmi-convert.json"


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


def check_kcore(kcore: int) -> int:
    if isinstance(kcore, bool) or not isinstance(kcore, (int, np.integer)):
        raise ConfigValueError(f"--kcore must be a whole number >= 0, got {kcore!r}")
    if kcore < 0:
        raise ConfigValueError(f"--kcore must be >= 0 (0 or 1 disables filtering), got {kcore}")
    return int(kcore)


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


def files_we_wrote(output: Path) -> set[str]:
    """The names the converter recorded in ``output``'s manifest (none when there is no manifest)."""
    try:
        return set(json.loads((output / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


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


def require_file(path: Path, what: str) -> Path:
    """``path``, or a one-line error naming it: missing, a folder, a special file or not readable."""
    if not os.path.lexists(path):
        raise DatasetError(f"missing {what}: {path} does not exist")
    problem = describe_unreadable(path, what)
    if problem:
        raise DatasetError(problem)
    return path


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
    with step(f"reading {path.name}"):
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
