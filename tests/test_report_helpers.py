"""What every report uses: recbole_cmi.markdown (tables), recbole_cmi.machine (where it ran), recbole_cmi.memory."""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

from recbole_cmi.machine import describe_environment, machine_text, package_versions, usable_cpus, versions_text
from recbole_cmi.markdown import markdown_table
from recbole_cmi.memory import PeakMemory, peak_rss_bytes, reset_peak_rss


def test_a_table_pads_its_columns_and_aligns_them_as_asked():
    text = markdown_table(["model", "n", "p"], [["CMI", 12, "0.0100"], ["GRU4Rec", 3, "n/a"]], "lr")
    assert text.split("\n") == [
        "| model   |   n | p      |",
        "|:--------|----:|:-------|",
        "| CMI     |  12 | 0.0100 |",
        "| GRU4Rec |   3 | n/a    |",
    ]


def test_cells_are_written_as_given_escaped_and_short_rows_filled():
    text = markdown_table(
        ["a", "b", "c"], [["0.2000", "1,000.0", None], ["x|y", "two\nlines"], ["**1.0 ± 0.1**"]], "rrr"
    )
    rows = text.split("\n")[2:]
    # No number parsing: 0.2000 keeps its digits, 1,000.0 its comma; None and missing cells are empty.
    assert [cell.strip() for cell in rows[0].strip("|").split("|")] == ["0.2000", "1,000.0", ""]
    assert "x\\|y" in rows[1] and "two lines" in rows[1] and rows[1].count(" |") == 3  # | escaped: still 3 cells
    assert rows[2].split("|")[1].strip() == "**1.0 ± 0.1**" and rows[2].count("|") == 4
    with pytest.raises(ValueError, match="more cells than the 2 headers"):
        markdown_table(["a", "b"], [[1, 2, 3]])
    with pytest.raises(ValueError, match="align letters are l, r or c"):
        markdown_table(["a"], [[1]], "x")


def test_the_environment_names_this_machine_and_the_installed_versions():
    import torch

    environment = describe_environment(gpu=False)
    machine, versions = environment["machine"], environment["versions"]
    assert machine["gpu"] is None  # told to stay on the CPU
    assert machine["usable_cpus"] == usable_cpus() <= machine["logical_cpus"] == os.cpu_count()
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["os"] == f"{platform.system()} {platform.release()}" and machine["cpu"]
    assert list(versions) == ["recbole_cmi", "recbole", "torch", "numpy", "pandas", "python"]
    assert versions == package_versions() and versions["numpy"] == np.__version__
    assert versions["python"] == platform.python_version()
    text = machine_text({**machine, "cpu": "Test CPU", "usable_cpus": 2, "logical_cpus": 4, "memory": "8 GiB"})
    assert text.startswith("Test CPU, 2 of 4 logical CPUs usable, torch threads ") and "memory 8 GiB; no GPU; " in text
    assert "; GPU: A100;" in machine_text({**machine, "gpu": "A100"})
    assert versions_text({"torch": "2.1", "python": "3.12"}) == "torch 2.1, python 3.12"


@pytest.mark.skipif(not reset_peak_rss(), reason="the kernel's peak (VmHWM) can be reset on Linux only")
def test_a_block_peak_starts_from_the_level_at_entry():
    block = np.ones(64 * 2**20 // 8)  # 64 MB touched, then freed: the process's peak stays up
    del block
    before = peak_rss_bytes()
    with PeakMemory() as memory:
        small = np.ones(4 * 2**20 // 8)  # 4 MB touched
        del small
    assert memory.rss_peak_delta < 32 * 2**20  # the earlier 64 MB are not this block's
    assert peak_rss_bytes() < before - 32 * 2**20  # the kernel's peak was reset at entry
