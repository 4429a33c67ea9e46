"""Where the yaml defaults and the bundled datasets live, installed or in a source checkout.

``setup.cfg`` maps the top-level ``properties/`` and ``dataset/`` folders into the installed
package (``recbole_cmi/properties``, ``recbole_cmi/dataset``); in a source checkout they sit
next to the package. One lookup serves both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"recbole_cmi resource folder '{name}' not found next to {PACKAGE_DIR}")


def properties_dir() -> Path:
    return resource_dir("properties")


def bundled_dataset_dir() -> Path:
    return resource_dir("dataset")


def bundled_datasets() -> list[str]:
    try:
        root = bundled_dataset_dir()
    except FileNotFoundError:
        return []
    return sorted(p.name for p in root.iterdir() if (p / f"{p.name}.inter").is_file())


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def plain_name_problem(name) -> str | None:
    """Why ``name`` is no plain file or folder name (a dataset's, a converter's ``--name``), or None."""
    if isinstance(name, str) and _PLAIN_NAME.match(name) and ".." not in name:
        return None
    return (
        "must be a plain name (letters, digits, '_', '-', '.'; no path separators, no '..', not absolute): "
        "the folder it lives in is given separately (--data_path, --output)"
    )


def describe_unreadable(path, what: str = "file") -> str | None:
    """Why ``path`` cannot be read as a regular file (one line naming it), or None when it can.

    Tells a missing file from a folder, a broken link or link loop, and a special file, which
    ``os.path.isfile`` alone would all call "missing".
    """
    path = str(path)
    if os.path.islink(path) and not os.path.exists(path):
        return f"{what} {path} is a broken symbolic link (its target is missing, or the links loop)"
    if os.path.isdir(path):
        return f"{what} {path} is a folder, not a file"
    if not os.path.exists(path):
        return f"{what} not found: {path}"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} is not readable (permissions)"
    return None
