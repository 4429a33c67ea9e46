"""The retrieval benchmark (``python -m recbole_cmi.benchmark speed --retrieval``, recbole_cmi.benchmark.retrieval):
exact and faiss rankings on a small synthetic catalogue (the retrieval itself: tests/test_retrieval.py)."""

from __future__ import annotations

import pytest
from conftest import call, one_line_error, unpadded

pytest.importorskip("faiss")

pytestmark = pytest.mark.e2e


def test_the_retrieval_benchmark_runs_on_a_small_catalogue(tmp_path):
    from recbole_cmi.benchmark import speed

    out = tmp_path / "retrieval.md"
    argv = ["--retrieval", "--catalogues", "2k", "--retrieval-interactions", "4k", "--retrieval-users", "40"]
    argv += ["--retrieval-train-steps", "2", "--ivf-nprobe", "1,64", "--hnsw-ef", "50", "--d", "8", "--out", str(out)]
    argv += ["--retrieval-zipf", "0.5"]
    status, stdout, err = call(speed.main, argv)
    assert status == 0, err
    finished = [line for line in stdout.splitlines() if line.startswith("[2k] ")]  # one line per evaluation
    assert len(finished) == 6 and all(" ms/user over " in line for line in finished), finished
    report = unpadded(out.read_text(encoding="utf-8"))
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| 2k")]
    assert [(r[1], r[2].split(" (")[0]) for r in rows] == [
        ("CMI", "exact"),
        ("CMI", "faiss ivf"),
        ("CMI", "faiss ivf"),
        ("CMI", "faiss hnsw"),
        ("SASRec", "exact"),
        ("SASRec", "faiss ivf"),
    ]
    exhaustive = rows[2]  # nprobe 64 >= the sqrt(2000) = 45 lists: every list searched, the exact top-50
    assert exhaustive[-1].strip(" |") == "1.0000" and rows[0][-1].strip(" |") == "1.0000"
    assert all(float(r[4]) > 0 for r in rows)  # ms per user
    assert "Zipf popularity exponent 0.5" in report and "Share of the catalogue that occurs in the log" in report
    status, _, err = call(speed.main, ["--retrieval", "--retrieval-zipf", "-1"])
    one_line_error(status, err, "--retrieval-zipf")


def test_log_coverage_counts_the_catalogue_items_a_log_reaches_once_and_three_times():
    from recbole_cmi.benchmark.retrieval import log_coverage

    # items 1..5: item 1 three times, item 2 once, item 4 four times; items 3 and 5 never
    assert log_coverage([1, 2, 1, 4, 4, 1, 4, 4], 5) == (3 / 5, 2 / 5)


def test_the_retrieval_benchmark_measures_trained_checkpoints_on_their_own_test_split(tiny_config, tmp_path):
    from recbole_cmi.benchmark import speed
    from recbole_cmi.pipeline import evaluate_checkpoint
    from recbole_cmi.quick_start import run_recbole_cmi

    settings = tiny_config(exclude_history_items=True, metrics=["Recall", "NDCG"], topk=[20, 50])
    checkpoints = [run_recbole_cmi(m, "tiny", config_dict=settings)["saved_model_file"] for m in ("CMI", "SASRec")]
    out = tmp_path / "retrieval.md"
    argv = ["--retrieval", "--retrieval-checkpoints", ",".join(checkpoints), "--ivf-nprobe", "64", "--hnsw-ef", "50"]
    status, stdout, err = call(speed.main, argv + ["--out", str(out)])
    assert status == 0, err
    finished = [line.split()[1:3] for line in stdout.splitlines() if line.startswith("[tiny] ")]  # one per evaluation
    assert finished == [
        ["CMI", "exact:"],
        ["CMI", "faiss"],
        ["CMI", "faiss"],
        ["SASRec", "exact:"],
        ["SASRec", "faiss"],
    ]
    rows = [line.split(" | ") for line in unpadded(out.read_text(encoding="utf-8")).splitlines() if "| tiny" in line]
    exact = evaluate_checkpoint(checkpoints[0])  # the exact row is the checkpoint's own test evaluation
    assert float(rows[0][7]) == pytest.approx(exact["recall@50"], abs=1e-4)
    assert float(rows[0][8]) == pytest.approx(exact["ndcg@20"], abs=1e-4)
    assert rows[1][-1].strip(" |") == "1.0000"  # nprobe 64 over sqrt(80) lists: exhaustive, the exact top-50
    status, _, err = call(speed.main, ["--retrieval", "--retrieval-checkpoints", str(tmp_path / "missing.pth")])
    one_line_error(status, err, "missing.pth")
