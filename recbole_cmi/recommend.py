"""Top-K items for one user: ``python -m recbole_cmi.recommend --checkpoint saved/<file>.pth --user <id>``.

The user is given by the dataset's original id. The model sees the user's whole history (its
last MAX_ITEM_LIST_LENGTH items) and every item the user interacted with is excluded. Multi-interest
models (CMI, ComiRecSA/DR) also print the interest each item came from. ``--retrieval faiss`` takes each
interest's top items from a faiss index (the checkpoint's ``faiss_*`` settings, ``--faiss-index`` to change the
index) instead of scoring every item; it needs ``pip install 'recbole_cmi[retrieval]'``.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from recbole_cmi.cli import TRUST_HELP, OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(prog="python -m recbole_cmi.recommend", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by our runs (saved/<Model>-<time>.pth)"
    )
    parser.add_argument("--user", required=True, help="the user's original id, as in the .inter file")
    parser.add_argument("--topk", type=int, default=20, help="number of items (default 20)")
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    parser.add_argument(
        "--retrieval",
        choices=("exact", "faiss"),
        default=None,
        help="exact: score every item; faiss: per-interest search in a faiss index (default: the checkpoint's "
        "retrieval setting, else exact)",
    )
    parser.add_argument(
        "--faiss-index", choices=("flat", "ivf", "hnsw"), default=None, help="faiss index (default: the checkpoint's)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    return run_cli(lambda: _run(args))


def _run(args) -> int:
    from recbole_cmi.retrieval import RetrievalSettings, import_faiss
    from recbole_cmi.tools.common import load
    from recbole_cmi.tools.recommend import format_recommendation, recommend

    if args.retrieval == "faiss":
        import_faiss()  # before the checkpoint's dataset is loaded: fail fast without faiss
    config, model, dataset, *_ = load(args.checkpoint, args.trust_checkpoint)
    retrieval = RetrievalSettings.from_config(config, mode=args.retrieval, index=args.faiss_index)
    if retrieval.mode == "faiss":
        import_faiss()
    print(format_recommendation(recommend(model, dataset, args.user, args.topk, retrieval), config["model"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
