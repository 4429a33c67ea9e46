"""Where the yaml defaults and the bundled datasets live, installed or in a source checkout.

``setup.cfg`` maps the top-level ``properties/`` and ``dataset/`` folders into the installed
package (``recbole_cmi/properties``, ``recbole_cmi/dataset``); in a source checkout they sit
next to the package. One lookup serves both.
"""

from __future__ import annotations

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
