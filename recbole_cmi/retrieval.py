"""Top-K retrieval per interest from a faiss index, merged by the best interest's score.

A multi-interest model scores item ``j`` for a user with interests ``u_1..u_m`` by
``max_l <u_l, v_j>`` (CMI, docs/cmi.md §4.1: cosine of unit vectors, so the inner product; ComiRec: raw inner
product, docs/baselines.md §1.5); a single-vector model (SASRec, GRU4Rec, CL4SRec) is the case ``m = 1``. Both
papers' code serve this by searching the top-N of every interest in a faiss index and merging; this module
does the same for full-sort evaluation (``retrieval: faiss``, :class:`recbole_cmi.trainer.RetrievalMixin`),
for ``recommend --retrieval faiss`` and for the export (:mod:`recbole_cmi.export`).

Exactness: each interest asks for ``K' = K + E`` items, ``E`` the number of excluded items of the user (its
history, when excluded). If an item ``j`` of the exact top-K (scored best by interest ``l``) were missing from
interest ``l``'s top-``K'``, then ``K'`` items would score at least as high for ``l``, at most ``E`` of them
excluded, so at least ``K`` admissible items would outrank ``j``: a contradiction. With an exhaustive index
(``flat``, or ``ivf`` with ``nprobe >= nlist``) the merged top-K is therefore the exact top-K. The candidates
are re-scored in torch with every interest (the model's own rule), so the scores and the interest an item came
from are the exact ones even when an approximate index found an item through one interest only.

Settings (``properties/overall.yaml``): ``faiss_index`` ``flat`` (exhaustive), ``ivf`` (``IndexIVFFlat``,
``faiss_nlist`` lists, 0 = about ``sqrt(items)``, searched ``faiss_nprobe`` at a time) or ``hnsw``
(``IndexHNSWFlat`` with ``faiss_hnsw_m`` links per node, ``faiss_ef_search`` candidates per query); the index
lives on the GPU when the model is on CUDA and faiss has GPU support (flat and IVF; HNSW has no GPU form).
Flat and IVF indexes are deterministic (IVF's k-means samples with a fixed seed); HNSW's parallel insertion
makes its graph depend on thread timing unless faiss runs on one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import numpy as np
import torch

from recbole_cmi.errors import ConfigValueError, RecboleCmiError

RETRIEVAL_MODES = ("exact", "faiss")
FAISS_INDEXES = ("flat", "ivf", "hnsw")
# Models whose full_sort_predict is max over interests of <interest, item row> (m = 1 for one user vector);
# tests/test_retrieval.py checks each against its full_sort_predict.
MULTI_INTEREST_MODELS = ("CMI", "ComiRecSA", "ComiRecDR")
SINGLE_VECTOR_MODELS = ("SASRec", "GRU4Rec", "CL4SRec")
SUPPORTED_MODELS = MULTI_INTEREST_MODELS + SINGLE_VECTOR_MODELS
# IVF's k-means trains on at most this many items per list (faiss's default is 256): at 1M items and 1,000
# lists that is 64k points, seconds on one core, and the lists come out as good for retrieval.
IVF_TRAIN_POINTS_PER_LIST = 64
HNSW_EF_CONSTRUCTION = 40  # faiss's default
MISSING_FAISS = (
    "retrieval: faiss needs the faiss package, which is not installed: pip install 'recbole_cmi[retrieval]' "
    "(or pip install faiss-cpu)"
)


@dataclasses.dataclass(frozen=True)
class RetrievalSettings:
    """``retrieval`` and the faiss index keys of a config; defaults as in ``properties/overall.yaml``."""

    mode: str = "exact"
    index: str = "ivf"
    nlist: int = 0
    nprobe: int = 32
    hnsw_m: int = 16
    ef_search: int = 128

    @classmethod
    def from_config(cls, config, **overrides) -> RetrievalSettings:
        """Read (and check) the keys; a key absent from ``config`` (an older checkpoint) takes the default."""
        problems = retrieval_config_problems(config)
        if problems:
            raise ConfigValueError("invalid config value " + "; ".join(problems))
        values = {}
        for field, key in _FIELD_KEYS.items():
            value = _get(config, key)
            if value is not None:
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        problems = retrieval_config_problems({key: getattr(settings, field) for field, key in _FIELD_KEYS.items()})
        if problems:
            raise ConfigValueError("invalid retrieval setting " + "; ".join(problems))
        return settings

    def describe(self) -> str:
        if self.mode == "exact":
            return "exact"
        if self.index == "ivf":
            return f"faiss ivf (nlist {self.nlist or 'auto'}, nprobe {self.nprobe})"
        if self.index == "hnsw":
            return f"faiss hnsw (M {self.hnsw_m}, efSearch {self.ef_search})"
        return "faiss flat"


_FIELD_KEYS = {
    "mode": "retrieval",
    "index": "faiss_index",
    "nlist": "faiss_nlist",
    "nprobe": "faiss_nprobe",
    "hnsw_m": "faiss_hnsw_m",
    "ef_search": "faiss_ef_search",
}


def _get(config, key):
    try:
        return config[key]
    except KeyError:
        return None


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def retrieval_config_problems(config) -> list[str]:
    """``key=value (requirement)`` for every bad retrieval key present in ``config`` (None = absent)."""
    checks = (
        ("retrieval", lambda v: v in RETRIEVAL_MODES, f"one of {', '.join(RETRIEVAL_MODES)}"),
        ("faiss_index", lambda v: v in FAISS_INDEXES, f"one of {', '.join(FAISS_INDEXES)}"),
        ("faiss_nlist", lambda v: _is_int(v, 0), "an integer >= 0; 0 = about sqrt(number of items)"),
        ("faiss_nprobe", lambda v: _is_int(v, 1), "an integer >= 1"),
        ("faiss_hnsw_m", lambda v: _is_int(v, 2), "an integer >= 2"),
        ("faiss_ef_search", lambda v: _is_int(v, 1), "an integer >= 1"),
    )
    problems = []
    for key, ok, requirement in checks:
        value = _get(config, key)
        if value is not None and not ok(value):
            problems.append(f"{key}={value!r} ({requirement})")
    return problems


def import_faiss():
    """``faiss``, or a one-line :class:`ConfigValueError` naming the extra that installs it."""
    try:
        import faiss
    except ImportError as err:
        raise ConfigValueError(MISSING_FAISS) from err
    return faiss


def check_model_supported(model) -> None:
    name = type(model).__name__
    if name not in SUPPORTED_MODELS:
        raise ConfigValueError(
            f"retrieval: faiss supports models that score by inner products with one or more user vectors "
            f"({', '.join(SUPPORTED_MODELS)}), not {name}; use retrieval: exact"
        )


# --------------------------------------------------------------------------------------------- vectors
def is_multi_interest(model) -> bool:
    """Whether ``model`` has several interests per user (its ``forward`` returns ``[B, m, d]``)."""
    return type(model).__name__ in MULTI_INTEREST_MODELS


def item_table(model) -> torch.Tensor:
    """The item vectors a model scores with, one row per item index (row 0 is padding).

    CMI: its unit vectors (docs/cmi.md §1.1); CL4SRec: the table without its mask-token row; the others: the item
    embedding table.
    """
    if hasattr(model, "item_vectors"):
        return model.item_vectors()
    if hasattr(model, "item_table"):
        return model.item_table()
    if hasattr(model, "item_embedding"):
        return model.item_embedding.weight[: model.n_items]
    raise RecboleCmiError(f"{type(model).__name__} has no item embedding table")


def interest_vectors(model, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """``[B, m, d]`` user vectors whose inner products with :func:`item_table`'s rows, maximised over the m,
    are the model's ``full_sort_predict`` (``m = 1`` for a single-vector model)."""
    if hasattr(model, "_project_to_sphere"):  # CMI re-projects its tables before scoring, as full_sort_predict
        model._project_to_sphere()
    vectors = model.forward(item_seq, item_seq_len)
    return vectors.unsqueeze(1) if vectors.dim() == 2 else vectors


# --------------------------------------------------------------------------------------------- index
def _faiss_uses_gpu(faiss, device) -> bool:
    return (
        torch.device(device).type == "cuda"
        and hasattr(faiss, "StandardGpuResources")
        and hasattr(faiss, "get_num_gpus")
        and faiss.get_num_gpus() > 0
    )


class ItemIndex:
    """A faiss inner-product index over the item rows ``1..n-1`` (padding excluded): index id ``r`` is item
    index ``r + 1``. ``search`` returns item indices, 0 where the index found fewer than asked."""

    def __init__(self, items: torch.Tensor, settings: RetrievalSettings, device="cpu"):
        faiss = import_faiss()
        vectors = np.ascontiguousarray(items[1:].detach().to("cpu", torch.float32).numpy())
        self.settings = settings
        self.ntotal, self.dim = vectors.shape
        if self.ntotal == 0:
            raise ConfigValueError("retrieval: faiss needs at least one item besides padding")
        start = time.perf_counter()
        self.nlist = 0
        if settings.index == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif settings.index == "ivf":
            self.nlist = min(settings.nlist or max(1, round(math.sqrt(self.ntotal))), self.ntotal)
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
            index.cp.min_points_per_centroid = 1  # tiny catalogues: no warning, k-means still runs
            index.train(vectors)
            self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        else:
            index = faiss.IndexHNSWFlat(self.dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(vectors)
        self.on_gpu = False
        if settings.index != "hnsw" and _faiss_uses_gpu(faiss, device):
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, torch.device(device).index or 0, index)
            self.on_gpu = True
        self.index = index
        self.set_search_params(settings.nprobe, settings.ef_search)
        self.build_seconds = time.perf_counter() - start

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Query-time knobs (no rebuild): IVF's lists probed, HNSW's candidate list."""
        if self.settings.index == "ivf" and nprobe is not None:
            self.nprobe = min(int(nprobe), self.nlist)
            self.index.nprobe = self.nprobe
        if self.settings.index == "hnsw" and ef_search is not None:
            self.index.hnsw.efSearch = int(ef_search)

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Item indices ``[Q, k]`` of each query's top-k by inner product (0 where fewer were found)."""
        k = min(int(k), self.ntotal)
        array = np.ascontiguousarray(queries.detach().to("cpu", torch.float32).numpy())
        _, ids = self.index.search(array, k)
        return torch.from_numpy(ids + 1).clamp_(min=0).to(queries.device)  # faiss's -1 (none) becomes 0

    def write(self, path) -> None:
        faiss = import_faiss()
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(index, str(path))


def build_item_index(model, settings: RetrievalSettings, device=None) -> ItemIndex:
    """The index over the vectors ``model`` scores items with (built once per evaluation)."""
    check_model_supported(model)
    with torch.no_grad():
        if hasattr(model, "_project_to_sphere"):
            model._project_to_sphere()
        items = item_table(model)
    return ItemIndex(items, settings, device if device is not None else items.device)


# --------------------------------------------------------------------------------------------- search
@dataclasses.dataclass
class Retrieved:
    """Per user: the top items (item index 0 and score -inf where fewer were found), their exact scores and
    the interest each one's score came from (the argmax over interests)."""

    items: torch.Tensor
    scores: torch.Tensor
    interests: torch.Tensor


@torch.no_grad()
def retrieve(index: ItemIndex, interests: torch.Tensor, items: torch.Tensor, k: int, excluded=None) -> Retrieved:
    """Top-``k`` items for each user by ``max_l <interests[b, l], items[j]>`` over the non-excluded items.

    Args:
        index: the index over ``items``' rows 1.. (see :class:`ItemIndex`).
        interests: ``[B, m, d]``.
        items: ``[n_items, d]`` the same vectors the index holds (for the exact re-scoring).
        k: items per user.
        excluded: ``[B, E]`` item indices never to return (0 entries are padding), or None.
    """
    batch, m, d = interests.shape
    n_excluded = int((excluded > 0).sum(dim=1).max()) if excluded is not None and excluded.numel() else 0
    per_interest_k = k + n_excluded
    found = index.search(interests.reshape(batch * m, d), per_interest_k).view(batch, -1)
    candidates, _ = found.sort(dim=1)  # duplicates (found by several interests) become neighbours
    duplicate = torch.zeros_like(candidates, dtype=torch.bool)
    duplicate[:, 1:] = candidates[:, 1:] == candidates[:, :-1]
    invalid = duplicate | (candidates == 0)
    if excluded is not None and excluded.numel():
        excluded = excluded.to(candidates.device)
        invalid |= (candidates.unsqueeze(2) == excluded.unsqueeze(1)).any(dim=2)
    per_item = torch.einsum("bmd,bcd->bmc", interests, items[candidates])
    best, origin = per_item.max(dim=1)
    best = best.masked_fill(invalid, -torch.inf)
    scores, order = best.topk(min(k, best.shape[1]), dim=1)
    chosen = candidates.gather(1, order).masked_fill(torch.isinf(scores), 0)
    return Retrieved(items=chosen, scores=scores, interests=origin.gather(1, order))
