"""Writing a file so that a reader, or a kill, only ever sees the old file or the complete new one (text, json).

``plain`` turns NumPy scalars and tuples into the plain values json and yaml write.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """``open`` a temporary file beside ``path``; on success it is flushed, synced and renamed over ``path``.

    On an error the temporary file is removed and ``path`` is left as it was. ``kwargs`` go to ``open``
    (text mode defaults to UTF-8 with ``\\n`` line ends).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # same folder, so the rename is atomic
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8), written atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def plain(value):
    """Numpy scalars and tuples as plain Python values, so yaml and json can write them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def write_json(path, data) -> None:
    """``path`` holds ``data`` as indented json (keys in their order), written atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
