"""Markdown tables for the reports, through ``tabulate``'s pipe format (GitHub-flavoured markdown)."""

from __future__ import annotations

ALIGN = {"l": "left", "r": "right", "c": "center"}


def markdown_cell(value) -> str:
    """``value`` as the text of one table cell: None as empty, ``|`` escaped, line breaks as spaces."""
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\r\n", " ").replace("\n", " ")


def markdown_table(headers, rows, align: str = "") -> str:
    """A pipe table: ``headers``, then ``rows`` (sequences of cells, each written as ``str``; a short row gets
    empty cells at its end), columns padded to their width. ``align`` gives one letter per column, ``l`` left
    (``:---``), ``r`` right (``---:``), ``c`` centred; columns past its end are left-aligned. Cells are written
    as given (no number parsing or reformatting), with ``|`` escaped. No trailing newline."""
    from tabulate import tabulate

    headers = [markdown_cell(h) for h in headers]
    bad = set(align) - set(ALIGN)
    if bad:
        raise ValueError(f"align letters are l, r or c, got {''.join(sorted(bad))!r}")
    rows = [[markdown_cell(cell) for cell in row] for row in rows]
    if any(len(row) > len(headers) for row in rows):
        raise ValueError(f"a row has more cells than the {len(headers)} headers")
    colalign = [ALIGN[a] for a in align.ljust(len(headers), "l")[: len(headers)]]
    return tabulate(rows, headers=headers, tablefmt="pipe", colalign=colalign, disable_numparse=True)
