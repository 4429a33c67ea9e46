"""The GPU check (``scripts/gpu_check.sh`` -> ``python -m recbole_cmi.benchmark gpu``): here, its CPU dry run."""

from __future__ import annotations

import pytest
import torch
from conftest import unpadded

from recbole_cmi.benchmark import gpu


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without CUDA does")
def test_without_cuda_the_check_says_so_and_runs_small_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    code = gpu.main(["--models=SASRec,ComiRecSA", "--interactions=3000", "--items=300", "--agree-users=64",
                     f"--out={out}"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "no CUDA device found" in captured.err
    # One line per finished epoch run and per agreement check on stdout.
    finished = [line for line in captured.out.splitlines() if line.startswith("[gpu] ")]
    assert [line.split(":")[0] for line in finished] == [
        "[gpu] SASRec AMP off", "[gpu] SASRec AMP on", "[gpu] SASRec agreement",
        "[gpu] ComiRecSA AMP off", "[gpu] ComiRecSA AMP on", "[gpu] ComiRecSA agreement",
    ]  # fmt: skip
    report = unpadded(out.read_text())
    assert report.startswith("# GPU check: dry run on the CPU (no CUDA device found)")
    assert "- machine: " in report and "logical CPUs usable" in report and "- versions: recbole_cmi " in report
    rows = [line for line in report.splitlines() if line.startswith(("| SASRec |", "| ComiRecSA |"))]
    assert len(rows) == 2 * 2 + 2  # AMP off and on per model, then one agreement row each
    assert not any("failed" in row for row in rows), rows
    # The same weights scored twice on the CPU: identical scores and top-20 lists.
    agreement = [row.split(" | ") for row in rows if row.count("|") == 6]
    assert len(agreement) == 2
    assert all(cells[1] == "0.00e+00" and cells[2] == "1.0000" for cells in agreement), agreement
    assert "Two-GPU DDP: not run (0 GPU(s) here; it needs 2)." in report


def test_agreement_measures_score_differences_and_top20_overlap():
    scores = torch.arange(60, dtype=torch.float32).repeat(3, 1)
    same = gpu.agreement(scores, scores.clone())
    assert same == {"max_score_diff": 0.0, "top20_overlap": 1.0}
    shifted = scores.clone()
    shifted[:, 40:45] = -1.0  # 5 of the top 20 drop out of the list
    result = gpu.agreement(scores, shifted)
    assert result["top20_overlap"] == pytest.approx(15 / 20) and result["max_score_diff"] == pytest.approx(45.0)
    masked = scores.clone()
    masked[:, 0] = float("-inf")  # masked items (history, padding) do not count as differences
    assert gpu.agreement(scores.masked_fill(torch.isinf(masked), float("-inf")), masked)["max_score_diff"] == 0.0
