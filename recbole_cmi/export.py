"""Export a trained checkpoint for serving: ``python -m recbole_cmi.export --checkpoint F --out DIR``.

Writes what a serving stack needs without RecBole or this package (``docs/serve_export.py`` loads it with
torch, numpy and faiss only and reproduces ``python -m recbole_cmi.recommend``'s top-K):

* ``item_vectors.npy``: float32 ``[n_items, d]``, row ``i`` = the vector of item index ``i`` that the model
  scores with (row 0 is padding; CMI: its unit vectors);
* ``items.tsv``: ``index<TAB>token``, the original item id of every item index;
* ``items.faiss``: a faiss inner-product index of rows ``1..n_items-1`` (index id ``r`` = item index ``r + 1``),
  of the checkpoint's ``faiss_index`` type unless ``--faiss-index`` says otherwise;
* ``user_encoder.pt``: TorchScript (traced) module mapping int64 ``[B, history_length]`` item indices (oldest
  first, left-aligned, 0-padded on the right; at least one item per row) to float32 ``[B, m, d]`` interest
  vectors (``m = 1`` for single-vector models);
* ``user_histories.tsv``: ``user<TAB>item tokens``, each user's whole known sequence, oldest first (what
  ``recommend`` feeds the model and excludes; a serving stack passes live histories instead);
* ``manifest.json``: model, m, d, τ, the scoring rule, the files and the versions that wrote them.

A user's score for item j is ``max_l <u_l, v_j>`` over the encoder's m outputs (:mod:`recbole_cmi.retrieval`).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

from recbole_cmi.retrieval import (
    RetrievalSettings,
    build_item_index,
    check_model_supported,
    import_faiss,
    is_multi_interest,
    item_table,
)

FORMAT = "recbole_cmi export 1"
FILES = {
    "item_vectors": "item_vectors.npy",
    "item_tokens": "items.tsv",
    "index": "items.faiss",
    "user_encoder": "user_encoder.pt",
    "user_histories": "user_histories.tsv",
}


class UserEncoder(torch.nn.Module):
    """Padded history ``[B, L]`` -> the model's user vectors ``[B, m, d]`` (lengths = the non-zero entries)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        lengths = (item_seq > 0).sum(dim=1).clamp(min=1)
        vectors = self.model.forward(item_seq, lengths)
        return vectors.unsqueeze(1) if vectors.dim() == 2 else vectors


def trace_user_encoder(model, history_length: int) -> torch.jit.ScriptModule:
    """TorchScript of :class:`UserEncoder`, traced on histories ``history_length`` wide.

    The example batch holds a full-length row: CMI trims the batch to its longest history, and the trace keeps
    that width, so every ``[B, history_length]`` input is then read whole.
    """
    model.eval()
    if hasattr(model, "_project_to_sphere"):  # once, now, so the trace holds no in-place re-projection
        with torch.no_grad():
            model._project_to_sphere()
    n_items = item_table(model).shape[0]
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(1, n_items, (3, history_length), generator=generator)
    example[1, history_length // 2 :] = 0
    example[2, 1:] = 0
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about the constant width, which is the contract
        return torch.jit.trace(UserEncoder(model), example, check_trace=False)


def user_sequences(dataset):
    """``{user token: [item index, ...]}``: every user's whole sequence, oldest first."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field]
    histories, lengths, targets = (
        inter[dataset.item_id_list_field],
        inter[dataset.item_list_length_field],
        inter[dataset.iid_field],
    )
    sequences = {}
    for row in range(len(users)):
        uid = int(users[row])
        if uid not in sequences:  # the user's first row: its history before the first target
            sequences[uid] = histories[row][: int(lengths[row])].tolist()
        sequences[uid].append(int(targets[row]))
    tokens = dataset.id2token(dataset.uid_field, list(sequences))
    return {str(token): items for token, items in zip(tokens, sequences.values())}


def export(checkpoint, out, faiss_index: str | None = None, trust_checkpoint: bool = False) -> dict:
    """Write the export of ``checkpoint`` into the folder ``out``; returns the manifest."""
    import numpy as np

    from recbole_cmi.tools.common import load

    faiss = import_faiss()
    pipeline = load(checkpoint, trust_checkpoint)
    config, model, dataset = pipeline.config, pipeline.model, pipeline.dataset
    check_model_supported(model)
    settings = RetrievalSettings.from_config(config, mode="faiss", index=faiss_index)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        index = build_item_index(model, settings)
        vectors = item_table(model).detach().to(torch.float32).numpy()
    np.save(out / FILES["item_vectors"], vectors)
    tokens = dataset.field2id_token[dataset.iid_field]
    with open(out / FILES["item_tokens"], "w", encoding="utf-8", newline="\n") as f:
        f.write("index\ttoken\n")
        f.writelines(f"{i}\t{tokens[i]}\n" for i in range(1, vectors.shape[0]))
    index.write(out / FILES["index"])
    history_length = int(config["MAX_ITEM_LIST_LENGTH"])
    trace_user_encoder(model, history_length).save(str(out / FILES["user_encoder"]))
    with open(out / FILES["user_histories"], "w", encoding="utf-8", newline="\n") as f:
        f.write("user\titems\n")
        for user, items in user_sequences(dataset).items():
            f.write(f"{user}\t{' '.join(str(tokens[i]) for i in items)}\n")

    manifest = _manifest(config, model, vectors, settings, index, history_length, faiss)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _manifest(config, model, vectors, settings, index, history_length: int, faiss) -> dict:
    """``manifest.json``: what the exported files hold and how a user is scored against an item."""
    multi = is_multi_interest(model)
    return {
        "format": FORMAT,
        "model": config["model"],
        "dataset": config["dataset"],
        "num_interests": int(model.num_interest) if multi else 1,
        "dim": int(vectors.shape[1]),
        "temperature": float(config["temperature"]) if config["model"] == "CMI" else None,
        "scoring": "score(user, item) = max over the user's interest vectors u_l of <u_l, item_vectors[item]>"
        + (
            "; all vectors are unit vectors, so this is the cosine, and the model's logits cosine / temperature "
            "rank the same"
            if config["model"] == "CMI"
            else ""
        ),
        "n_items": int(vectors.shape[0]),
        "history_length": history_length,
        "user_encoder_input": "int64 [batch, history_length]: item indices, oldest first, left-aligned, "
        "0-padded on the right, at least one item per row",
        "user_encoder_output": "float32 [batch, num_interests, dim]",
        "index": {
            "type": settings.index,
            "ids": "index id r is item index r + 1 (item index 0 is padding)",
            "metric": "inner product",
            **({"nlist": index.nlist, "nprobe": index.nprobe} if settings.index == "ivf" else {}),
            **({"hnsw_m": settings.hnsw_m, "ef_search": settings.ef_search} if settings.index == "hnsw" else {}),
        },
        "exclusion": "recommend excludes every item of the user's whole sequence (user_histories.tsv)",
        "files": dict(FILES),
        "versions": _versions(faiss),
    }


def _versions(faiss) -> dict:
    from recbole_cmi.machine import package_versions

    return {**package_versions(), "faiss": getattr(faiss, "__version__", "unknown")}


def main(argv=None) -> int:
    from recbole_cmi.cli import TRUST_HELP, OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(prog="python -m recbole_cmi export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by our runs")
    parser.add_argument("--out", required=True, help="output folder (created; our files in it are replaced)")
    parser.add_argument(
        "--faiss-index", choices=("flat", "ivf", "hnsw"), default=None, help="index type (default: the checkpoint's)"
    )
    parser.add_argument("--trust_checkpoint", action="store_true", help=TRUST_HELP)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def action():
        manifest = export(args.checkpoint, args.out, args.faiss_index, args.trust_checkpoint)
        print(
            f"exported {manifest['model']} ({manifest['n_items'] - 1} items, m = {manifest['num_interests']}, "
            f"d = {manifest['dim']}, {manifest['index']['type']} index) to {args.out}"
        )

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
