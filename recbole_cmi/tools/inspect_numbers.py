"""The numbers behind ``python -m recbole_cmi inspect`` (:mod:`recbole_cmi.tools.inspect` writes the report).

Every item's soft assignment to CMI's implicit categories, interactions per item in the training split, a
deterministic 2-D PCA, the NMI / ARI agreement of two clusterings, a seeded k-means of item vectors, and the item
vectors of a baseline checkpoint trained on the same items.
"""

from __future__ import annotations

import numpy as np
import torch

from recbole_cmi.tools.common import ToolError, item_table, load


@torch.no_grad()
def item_assignment(model) -> np.ndarray:
    """``[n_items, m]``: every item's soft assignment to the categories (row 0, padding, is 0)."""
    model.eval()
    return model.assignment(torch.arange(model.n_items).unsqueeze(0))[0].numpy().astype(np.float64)


def training_counts(train_dataset, n_items: int) -> np.ndarray:
    """Interactions per item in the training split: every target, plus each user's first item."""
    inter = train_dataset.inter_feat
    first = inter[train_dataset.item_id_list_field][inter[train_dataset.item_list_length_field] == 1][:, 0]
    items = torch.cat([inter[train_dataset.iid_field], first])
    return np.bincount(items.numpy(), minlength=n_items)


def pca_2d(x: np.ndarray):
    """``(coordinates [N, 2], components [2, d], mean [d], explained variance ratio [2])`` via SVD.

    Deterministic: each component's sign makes its largest-magnitude loading positive.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:2].copy()
    for row in components:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    explained = singular[:2] ** 2 / max((singular**2).sum(), 1e-12)
    return (x - mean) @ components.T, components, mean, explained


def cluster_agreement(predicted, truth) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "ari": float(adjusted_rand_score(truth, predicted)),
    }


def kmeans_labels(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded k-means of L2-normalised vectors (cosine geometry)."""
    from sklearn.cluster import KMeans

    x = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(x)


def baseline_vectors(baseline_checkpoint, dataset, trust: bool = False) -> tuple[str, np.ndarray]:
    """``(model name, item vectors [n_items, d])`` of a baseline trained on the same items."""
    baseline = load(baseline_checkpoint, trust)
    model, base_dataset = baseline.model, baseline.dataset
    iid = dataset.iid_field
    if base_dataset.dataset_name != dataset.dataset_name or not np.array_equal(
        np.asarray(base_dataset.field2id_token[iid]), np.asarray(dataset.field2id_token[iid])
    ):
        raise ToolError(
            f"--baseline_checkpoint {baseline_checkpoint} was trained on '{base_dataset.dataset_name}' with "
            f"other items than the CMI checkpoint ('{dataset.dataset_name}')"
        )
    with torch.no_grad():
        return type(model).__name__, item_table(model).detach().numpy().astype(np.float64)
