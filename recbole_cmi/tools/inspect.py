"""What CMI's implicit categories learned (``python -m recbole_cmi.inspect``).

From a trained CMI checkpoint, writes PNGs and a ``report.md`` linking them:

(a) usage of the m implicit categories: the share of items whose argmax assignment is each one,
    and the mean assignment mass over the training interactions;
(b) each category's most typical items (highest assignment probability);
(c) when the item file has a category column: the implicit × planted confusion matrix and the
    NMI / ARI of argmax implicit category vs planted category (and, given a baseline checkpoint,
    of a seeded k-means of its item embeddings, k = number of planted categories);
(d) a deterministic 2-D PCA of the item vectors coloured by implicit category, categories marked;
(e) a few seeded sample users: their m interests, what each would recommend (history excluded),
    and the share of the history assigned to each.

Items are evaluated in (a), (c) and (d) only if they occur in the training split: the vectors of
the others are their random initialisation. The numbers are computed in :mod:`recbole_cmi.tools.inspect_numbers`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recbole_cmi.markdown import markdown_table
from recbole_cmi.tools.common import (
    ToolError,
    all_histories,
    item_table,
    load,
    pyplot,
    read_item_labels,
    tokens,
    user_history,
)
from recbole_cmi.tools.inspect_numbers import (
    baseline_vectors,
    cluster_agreement,
    item_assignment,
    kmeans_labels,
    pca_2d,
    training_counts,
)


def require_cmi(model, checkpoint):
    from recbole_cmi.model.cmi import CMI

    if not isinstance(model, CMI):
        raise ToolError(
            f"{checkpoint} holds a {type(model).__name__} model: inspection needs a model with implicit "
            f"categories (CMI)"
        )


def inspect_checkpoint(
    checkpoint,
    out,
    users: int = 3,
    top: int = 10,
    baseline_checkpoint=None,
    seed: int = 2022,
    category_field="category",
    trust_checkpoint: bool = False,
) -> dict:
    """Write the PNGs and ``report.md`` into ``out``; returns the numbers (also in ``summary.json``).

    ``trust_checkpoint`` also reads pickled (old) checkpoints, which can run code (``recbole_cmi.checkpoint``).
    """
    if users < 0 or top < 1:
        raise ToolError(f"--users must be >= 0 and --top >= 1, got {users} and {top}")
    pipeline = load(checkpoint, trust_checkpoint)
    config, model, dataset, train_data = pipeline.config, pipeline.model, pipeline.dataset, pipeline.train_data
    require_cmi(model, checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    iid = dataset.iid_field
    n_items, m = model.n_items, model.num_interest
    assign = item_assignment(model)
    implicit = assign.argmax(axis=1)
    counts = training_counts(train_data._dataset, n_items)
    seen = np.flatnonzero(counts > 0)
    seen = seen[seen > 0]
    item_ids = np.array(tokens(dataset, iid, np.arange(n_items)), dtype=object)
    planted = read_item_labels(config, dataset, category_field)
    codes, names = planted if planted else (None, None)

    summary = _usage_summary(checkpoint, config, model, assign, implicit, counts, seen)
    sections = [_header(config, checkpoint, summary)]
    sections.append(_usage(out, summary, m))
    sections.append(_typical_items(model, assign, item_ids, codes, names, top))
    if codes is not None:
        labelled = seen[codes[seen] >= 0]
        recovery = _recovery(
            out,
            model,
            implicit,
            codes,
            names,
            labelled,
            dataset,
            baseline_checkpoint,
            seed,
            summary,
            category_field,
            trust=trust_checkpoint,
        )
        sections.append(recovery)
    else:
        sections.append(
            f"## (c) Recovery of the planted categories\n\nThe item file has no `{category_field}` column.\n"
        )
    sections.append(_projection(out, model, implicit, seen, m, codes, names))
    if users:
        sections.append(_sample_users(out, model, dataset, item_ids, codes, names, users, top, seed, summary))
    (out / "report.md").write_text("\n".join(sections), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _usage_summary(checkpoint, config, model, assign, implicit, counts, seen) -> dict:
    """The summary's first numbers: per interest the share of training items it holds (by their implicit
    interest) and its share of the assignment mass weighted by training interactions."""
    n_items, m = model.n_items, model.num_interest
    summary = {
        "checkpoint": str(checkpoint),
        "dataset": config["dataset"],
        "num_interest": int(m),
        "items": int(n_items - 1),
        "items_in_training": int(len(seen)),
        "item_share": [float((implicit[seen] == c).mean()) for c in range(m)],
        "assignment_mass": (assign[1:] * counts[1:, None]).sum(axis=0).tolist(),
    }
    summary["assignment_mass"] = [x / max(counts[1:].sum(), 1) for x in summary["assignment_mass"]]
    return summary


def _header(config, checkpoint, summary) -> str:
    return (
        f"# CMI's implicit categories\n\n"
        f"Checkpoint `{Path(str(checkpoint)).name}` on `{config['dataset']}`: m = {summary['num_interest']} "
        f"implicit categories, {summary['items']} items ({summary['items_in_training']} in the training split), "
        f"d = {config['embedding_size']}. Written by `python -m recbole_cmi.inspect`.\n"
    )


def _colours(m: int):
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if m <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(m)]


def _usage(out, summary, m) -> str:
    plt = pyplot()
    x = np.arange(m)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    ax.bar(x - 0.2, summary["item_share"], width=0.4, label="share of items (argmax)")
    ax.bar(x + 0.2, summary["assignment_mass"], width=0.4, label="assignment mass, training interactions")
    ax.axhline(1 / m, color="grey", lw=0.8, ls="--", label="uniform 1/m")
    ax.set_xticks(x)
    ax.set_xlabel("implicit category")
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "usage.png", dpi=80)
    plt.close(fig)
    header = ["implicit category", "share of items (argmax)", "mean assignment mass over training interactions"]
    rows = [[c, f"{summary['item_share'][c]:.3f}", f"{summary['assignment_mass'][c]:.3f}"] for c in range(m)]
    return f"## (a) Category usage\n\n![usage](usage.png)\n\n{markdown_table(header, rows)}\n"


def _label(item, item_ids, codes, names) -> str:
    return f"{item_ids[item]}" + (f" ({names[codes[item]]})" if codes is not None and codes[item] >= 0 else "")


def _typical_items(model, assign, item_ids, codes, names, top) -> str:
    pools = model.category_item_pools(top).numpy()
    lines = [
        "## (b) Most typical items per implicit category",
        "",
        "Items with the highest assignment probability to each category"
        + (" (planted category in brackets)" if codes is not None else "")
        + ".",
        "",
    ]
    header = ["implicit category", "top items", "p of the first / last"]
    header += ["majority planted category among them"] if codes is not None else []
    rows = []
    for c, pool in enumerate(pools):
        cells = [str(c), ", ".join(_label(i, item_ids, codes, names) for i in pool)]
        cells.append(f"{assign[pool[0], c]:.3f} / {assign[pool[-1], c]:.3f}")
        if codes is not None:
            known = codes[pool][codes[pool] >= 0]
            if len(known):
                values, freq = np.unique(known, return_counts=True)
                cells.append(f"{names[values[freq.argmax()]]} ({freq.max()}/{len(pool)})")
            else:
                cells.append("–")
        rows.append(cells)
    lines.append(markdown_table(header, rows))
    return "\n".join(lines) + "\n"


def _recovery(
    out, model, implicit, codes, names, labelled, dataset, baseline_checkpoint, seed, summary, field, trust=False
) -> str:
    plt = pyplot()
    m, k = model.num_interest, len(names)
    truth = codes[labelled]
    scores = {f"CMI implicit categories (argmax, {m} clusters)": cluster_agreement(implicit[labelled], truth)}
    cmi_vectors = item_table(model).detach().numpy().astype(np.float64)
    for clusters in dict.fromkeys((k, m)):
        scores[f"k-means of CMI item vectors (k = {clusters})"] = cluster_agreement(
            kmeans_labels(cmi_vectors[labelled], clusters, seed), truth
        )
    if baseline_checkpoint:
        name, vectors = baseline_vectors(baseline_checkpoint, dataset, trust)
        scores[f"k-means of {name} item embeddings (k = {k})"] = cluster_agreement(
            kmeans_labels(vectors[labelled], k, seed), truth
        )
        if m != k:
            scores[f"k-means of {name} item embeddings (k = m = {m})"] = cluster_agreement(
                kmeans_labels(vectors[labelled], m, seed), truth
            )
    summary["recovery"] = scores
    summary["planted_categories"] = k

    confusion = np.zeros((m, k), dtype=np.int64)
    np.add.at(confusion, (implicit[labelled], truth), 1)
    # Columns ordered by the implicit category holding most of each planted one: a block diagonal.
    order = sorted(range(k), key=lambda j: (confusion[:, j].argmax(), -confusion[:, j].max()))
    shown = confusion[:, order]
    share = shown / np.maximum(shown.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.42 * k + 1.5), max(2.5, 0.38 * m + 1.2)), dpi=80)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if m * k <= 400:
        for i in range(m):
            for j in range(k):
                if shown[i, j]:
                    ax.text(j, i, str(shown[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(k), [names[j] for j in order], rotation=90, fontsize=7)
    ax.set_yticks(range(m))
    ax.set_xlabel(f"planted {field}")
    ax.set_ylabel("implicit category (argmax)")
    fig.colorbar(image, ax=ax, label="share of the row's items")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=80)
    plt.close(fig)
    table = markdown_table(
        ["clustering of the items", "NMI", "ARI"],
        [[name, f"{s['nmi']:.3f}", f"{s['ari']:.3f}"] for name, s in scores.items()],
    )
    return (
        "## (c) Recovery of the planted categories\n\n"
        f"{len(labelled)} items of the training split with a planted `{field}` ({k} values). Item counts, "
        "coloured by the share of each implicit category's items:\n\n![confusion](confusion.png)\n\n"
        f"{table}\n\n"
        f"k-means: scikit-learn, L2-normalised vectors, random_state={seed}, n_init=10.\n"
    )


def _projection(out, model, implicit, seen, m, codes, names) -> str:
    plt = pyplot()
    with torch.no_grad():
        items = model.item_vectors().numpy().astype(np.float64)[seen]
        categories = model.category_vectors().numpy().astype(np.float64)
    coords, components, mean, explained = pca_2d(items)
    centres = (categories - mean) @ components.T
    colours = _colours(m)
    panels = 2 if codes is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.0 * panels, 4.3), dpi=80, squeeze=False, sharey=True)
    ax = axes[0, 0]
    ax.scatter(coords[:, 0], coords[:, 1], s=5, c=[colours[c] for c in implicit[seen]], alpha=0.6, linewidths=0)
    for c, (x, y) in enumerate(centres):
        ax.scatter([x], [y], marker="*", s=220, color=colours[c], edgecolors="black", linewidths=0.8)
        ax.annotate(str(c), (x, y), xytext=(5, 5), textcoords="offset points", fontsize=9, weight="bold")
    ax.set_title("by implicit category (argmax); ★ category vectors", fontsize=9)
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    if codes is not None:
        ax = axes[0, 1]
        planted = codes[seen]
        palette = _colours(len(names))
        ax.scatter(
            coords[:, 0],
            coords[:, 1],
            s=5,
            c=[palette[c] if c >= 0 else "lightgrey" for c in planted],
            alpha=0.6,
            linewidths=0,
        )
        ax.set_title("by planted category", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
    fig.tight_layout()
    fig.savefig(out / "pca.png", dpi=80)
    plt.close(fig)
    return (
        "## (d) Item vectors in 2-D\n\n"
        "PCA (numpy SVD) of the unit item vectors of the training split, coloured by argmax implicit category"
        + (" (left) and by planted category (right)" if codes is not None else "")
        + f"; the stars are the category vectors projected the same way. The two components hold "
        f"{explained.sum():.0%} of the variance.\n\n![pca](pca.png)\n"
    )


@torch.no_grad()
def _sample_users(out, model, dataset, item_ids, codes, names, users, top, seed, summary) -> str:
    plt = pyplot()
    uids, _, _ = all_histories(dataset)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(uids.numpy(), size=min(users, len(uids)), replace=False).tolist())
    uid_field = dataset.uid_field
    m = model.num_interest
    lines = [
        "## (e) Sample users",
        "",
        f"{len(chosen)} users drawn with seed {seed}. Input: the whole history (last MAX_ITEM_LIST_LENGTH "
        f"items); each interest's top {top} items by cosine, every item the user interacted with excluded.",
        "",
    ]
    shares_all, user_names = [], []
    items = model.item_vectors()
    for uid in chosen:
        seq, length, known = user_history(dataset, uid)
        interests, assignment = model.encode(seq, length)
        share = (assignment[0, : int(length[0])].sum(dim=0) / length[0]).numpy()
        scores = interests[0] @ items.T
        scores[:, 0] = -torch.inf
        scores[:, known] = -torch.inf
        best = scores.topk(min(top, int(torch.isfinite(scores[0]).sum())), dim=1).indices.numpy()
        name = tokens(dataset, uid_field, [uid])[0]
        user_names.append(name)
        shares_all.append(share)
        history = seq[0, : int(length[0])].numpy()
        lines.append(f"### user {name}: {int(length[0])} history items, {len(known)} known")
        lines.append("")
        if codes is not None:
            values, freq = np.unique([names[c] for c in codes[history] if c >= 0], return_counts=True)
            mix = ", ".join(f"{v}×{f}" for v, f in sorted(zip(values, freq), key=lambda t: -t[1]))
            lines += [f"Planted categories of the history: {mix}.", ""]
        rows = []
        for c in np.argsort(-share):
            listed = ", ".join(_label(i, item_ids, codes, names) for i in best[c])
            rows.append([c, f"{share[c]:.2f}", listed])
        lines += [markdown_table(["interest", "share of the history", "top items"], rows), ""]
        summary.setdefault("users", {})[name] = {"history_share": share.tolist()}
    shares = np.array(shares_all)
    colours = _colours(m)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(chosen) + 1.2), dpi=80)
    left = np.zeros(len(chosen))
    for c in range(m):
        ax.barh(user_names, shares[:, c], left=left, color=colours[c], label=str(c))
        left += shares[:, c]
    ax.set_xlabel("share of the history assigned to each interest")
    ax.legend(title="interest", fontsize=7, ncol=min(m, 8), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(out / "users.png", dpi=80)
    plt.close(fig)
    lines.insert(4, "![users](users.png)\n")
    return "\n".join(lines)
