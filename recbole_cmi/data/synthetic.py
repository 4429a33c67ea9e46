"""Seeded generator of synthetic micro-video consumption logs in RecBole atomic format.

The simulation (documented in the README, section "The micro_video dataset"):

* items belong to ``n_categories`` latent categories; popularity inside a category follows a
  Zipf law with exponent ``zipf``;
* each user holds 2..``max_interests`` interests (categories) with Dirichlet weights;
* consumption comes in short sessions (geometric length, mean ``session_len``) that mostly stay
  inside one interest; with probability ``explore`` an item comes from a random category;
* interests drift slowly: after a session, with probability ``drift`` one interest is replaced
  by a new category;
* sessions are spread over ``n_days`` days, so timestamps carry a day structure (86,400 s/day).

Named presets (:data:`PRESETS`, ``--preset``): ``micro_video``, the defaults that made the bundled
dataset, and ``micro_video_noisy``, the same catalogue with noisier histories (three times the
exploration, five times the drift, shorter sessions), where the items of a history say less about
its user's interests: the harder case for the contrastive term's robustness claim.

A user never consumes the same item twice (micro-video logs rarely repeat), so the output has
no duplicate (user, item) pairs. Everything is drawn from one ``numpy`` PCG64 generator seeded
with ``seed``: the same arguments give byte-identical files on every platform.

Two modes of :func:`generate`:

* exact (the default; the bundled dataset): the process above, drawn user by user and item by item;
* ``fast=True`` (the speed, retrieval and GPU benchmarks' catalogues of up to millions of items): the same
  latent-category process (Zipf popularity inside each category, 2..``max_interests`` interests per user with
  Dirichlet weights, geometric sessions inside one interest, ``explore`` random categories, no repeated item
  per user, timestamps over ``n_days``) drawn with whole-array NumPy operations. Its output is another sample
  than the exact mode's (also seeded and deterministic), it omits the slow interest drift (``drift``), and
  ``n_interactions`` can size the log instead of ``n_users``. The exact mode draws each item with a ``choice``
  over its category's popularity vector, O(items per category) per draw: hours at 5M interactions over 1M
  items; the fast one takes seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from recbole_cmi.cli import OneLineArgumentParser

SECONDS_PER_DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 2000
    n_items: int = 1200
    n_categories: int = 16
    max_interests: int = 4
    min_len: int = 10
    max_len: int = 60
    mean_len: float = 25.0
    session_len: float = 5.0
    explore: float = 0.1
    drift: float = 0.03
    zipf: float = 1.0
    n_days: int = 14
    seed: int = 2022

    def validate(self) -> None:
        problems = []
        if self.n_users < 1:
            problems.append(f"n_users must be >= 1, got {self.n_users}")
        if self.n_categories < 2:
            problems.append(f"n_categories must be >= 2, got {self.n_categories}")
        if self.n_items < self.n_categories:
            problems.append(f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories})")
        if not 2 <= self.max_interests <= self.n_categories:
            problems.append(f"max_interests must be in [2, n_categories], got {self.max_interests}")
        if not 2 <= self.min_len <= self.max_len:
            problems.append(f"need 2 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.max_len > self.n_items // 2:
            problems.append(f"max_len ({self.max_len}) must be <= n_items / 2 ({self.n_items // 2})")
        for name in ("explore", "drift"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value}")
        if self.session_len < 1:
            problems.append(f"session_len must be >= 1, got {self.session_len}")
        if self.n_days < 1:
            problems.append(f"n_days must be >= 1, got {self.n_days}")
        if problems:
            raise ValueError("invalid synthetic dataset settings: " + "; ".join(problems))


PRESETS = {
    "micro_video": SyntheticConfig(),
    "micro_video_noisy": SyntheticConfig(explore=0.3, drift=0.15, session_len=3.0),
}


@dataclasses.dataclass
class SyntheticData:
    users: np.ndarray  # [N] user index (1-based)
    items: np.ndarray  # [N] item index (1-based)
    timestamps: np.ndarray  # [N] seconds
    item_category: np.ndarray  # [n_items] category of item i+1


def generate(cfg: SyntheticConfig, fast: bool = False, n_interactions: int | None = None) -> SyntheticData:
    """A log drawn with ``cfg`` (module docstring). ``fast``: the vectorised mode; ``n_interactions`` (fast mode
    only): draw users until the total reaches it (``cfg.n_users`` is then ignored; the log has at most that
    many interactions, fewer by less than ``cfg.max_len``); None: ``cfg.n_users`` users."""
    if fast:
        return _generate_fast(cfg, n_interactions)
    if n_interactions is not None:
        raise ValueError("n_interactions sizes the fast mode only: generate(cfg, fast=True, n_interactions=...)")
    cfg.validate()
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    item_category = rng.integers(0, cfg.n_categories, size=cfg.n_items)
    # Guarantee that every category owns at least one item.
    item_category[: cfg.n_categories] = np.arange(cfg.n_categories)
    item_category = rng.permutation(item_category)
    members = [np.flatnonzero(item_category == c) for c in range(cfg.n_categories)]
    popularity = []
    for items in members:
        ranks = rng.permutation(len(items)) + 1
        weights = ranks.astype(np.float64) ** -cfg.zipf
        popularity.append(weights / weights.sum())

    users, items_out, times = [], [], []
    for user in range(1, cfg.n_users + 1):
        n_interests = int(rng.integers(2, cfg.max_interests + 1))
        interests = rng.choice(cfg.n_categories, size=n_interests, replace=False)
        weights = rng.dirichlet(np.ones(n_interests))
        length = int(np.clip(round(rng.lognormal(np.log(cfg.mean_len), 0.5)), cfg.min_len, cfg.max_len))
        seen: set[int] = set()
        sequence: list[int] = []
        while len(sequence) < length:
            category = int(interests[rng.choice(n_interests, p=weights)])
            session = int(rng.geometric(1.0 / cfg.session_len))
            for _ in range(min(session, length - len(sequence))):
                source = int(rng.integers(cfg.n_categories)) if rng.random() < cfg.explore else category
                item = _draw_unseen(rng, members[source], popularity[source], seen)
                if item is None:  # category exhausted for this user: fall back to any unseen item
                    item = _draw_unseen(rng, np.arange(cfg.n_items), None, seen)
                seen.add(item)
                sequence.append(item)
            if rng.random() < cfg.drift:
                slot = int(rng.integers(n_interests))
                candidates = np.setdiff1d(np.arange(cfg.n_categories), interests)
                interests[slot] = int(rng.choice(candidates))
        days = np.sort(rng.integers(0, cfg.n_days, size=length))
        # Sorted offsets plus the position make the stamps strictly increasing; drawing the offsets
        # below SECONDS_PER_DAY - length keeps every item inside its day (a day split needs that).
        offsets = np.sort(rng.integers(0, SECONDS_PER_DAY - length, size=length))
        stamps = days * SECONDS_PER_DAY + offsets + np.arange(length)
        users.append(np.full(length, user))
        items_out.append(np.asarray(sequence) + 1)
        times.append(stamps)
    return SyntheticData(
        users=np.concatenate(users),
        items=np.concatenate(items_out),
        timestamps=np.concatenate(times),
        item_category=item_category,
    )


def _draw_unseen(rng, pool, probs, seen):
    for _ in range(8):
        item = int(pool[rng.choice(len(pool), p=probs)])
        if item not in seen:
            return item
    unseen = [int(i) for i in pool if int(i) not in seen]
    if not unseen:
        return None
    return unseen[int(rng.integers(len(unseen)))]


def _generate_fast(cfg: SyntheticConfig, n_interactions: int | None) -> SyntheticData:
    """The fast mode of :func:`generate` (module docstring): whole-array draws, no drift."""
    cfg.validate()
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    n_items, n_cat = cfg.n_items, cfg.n_categories

    item_category, draw_from = _fast_items(rng, cfg)

    # Users: lengths, then as many users as the interaction budget allows.
    if n_interactions is None:
        n_users = cfg.n_users
        lengths = _lengths(rng, cfg, n_users)
    else:
        lengths = _lengths(rng, cfg, int(n_interactions / cfg.min_len) + 1)
        n_users = max(1, int(np.searchsorted(np.cumsum(lengths), n_interactions, side="right")))
        lengths = lengths[:n_users]
    total = int(lengths.sum())
    user = np.repeat(np.arange(n_users), lengths)
    user_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(total) - user_start[user]

    # Interests: 2..max_interests distinct categories per user with Dirichlet(1) weights.
    n_interests = rng.integers(2, cfg.max_interests + 1, size=n_users)
    interests = np.argsort(rng.random((n_users, n_cat)), axis=1)[:, : cfg.max_interests]
    slot_weights = rng.exponential(size=(n_users, cfg.max_interests))
    slot_weights[np.arange(cfg.max_interests)[None, :] >= n_interests[:, None]] = 0.0
    cumulative = np.cumsum(slot_weights, axis=1) / slot_weights.sum(axis=1, keepdims=True)

    # Sessions: geometric lengths (a new session starts at each position with probability 1/mean),
    # each inside one interest; a fraction `explore` of the items comes from a random category.
    new_session = (position == 0) | (rng.random(total) < 1.0 / cfg.session_len)
    session = np.cumsum(new_session) - 1
    session_user = user[new_session]
    slot = (rng.random(len(session_user))[:, None] > cumulative[session_user]).sum(axis=1)
    slot = np.minimum(slot, n_interests[session_user] - 1)
    category = interests[session_user, slot][session]
    explore = rng.random(total) < cfg.explore
    category[explore] = rng.integers(0, n_cat, size=int(explore.sum()))
    items = draw_from(category)

    user, items, position = _redraw_repeats(rng, user, items, position, category, draw_from, n_items)

    # Timestamps: sorted uniform times over n_days, made strictly increasing inside each user.
    stamps = rng.integers(0, cfg.n_days * SECONDS_PER_DAY, size=len(user))
    stamps = stamps[np.lexsort((stamps, user))] + position
    return SyntheticData(users=user + 1, items=items + 1, timestamps=stamps, item_category=item_category)


def _fast_items(rng, cfg: SyntheticConfig):
    """The fast mode's catalogue: ``(item_category, draw_from)``, where ``draw_from(categories)`` draws one item of
    each given category by its Zipf popularity."""
    n_items, n_cat = cfg.n_items, cfg.n_categories
    # Items: a category each (every category owns one at least), Zipf popularity inside the category.
    item_category = rng.integers(0, n_cat, size=n_items)
    item_category[:n_cat] = np.arange(n_cat)
    item_category = rng.permutation(item_category)
    by_category = np.lexsort((rng.random(n_items), item_category))  # items grouped by category, random order
    counts = np.bincount(item_category, minlength=n_cat)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n_items) - np.repeat(starts, counts) + 1  # popularity rank inside the category
    weights = rank.astype(np.float64) ** -cfg.zipf
    within = np.cumsum(weights) - np.repeat(np.cumsum(weights)[starts] - weights[starts], counts)
    totals = np.add.reduceat(weights, starts)
    cdf = np.repeat(np.arange(n_cat), counts) + within / np.repeat(totals, counts)  # category c spans (c, c+1]

    def draw_from(categories: np.ndarray) -> np.ndarray:
        position = np.searchsorted(cdf, categories + rng.random(len(categories)))
        low, high = starts[categories], starts[categories] + counts[categories] - 1
        return by_category[np.clip(position, low, high)]

    return item_category, draw_from


def _redraw_repeats(rng, user, items, position, category, draw_from, n_items):
    """``(user, items, position)`` without a repeated (user, item) pair (the fast mode's last draws)."""
    # No repeats: redraw every later occurrence of a (user, item) pair, first from its category, then
    # from the whole catalogue; validate() guarantees max_len <= n_items / 2, so this converges fast.
    for round_ in range(64):
        repeated = _repeated(user, items, n_items)
        if not repeated.any():
            break
        if round_ < 8:
            items[repeated] = draw_from(category[repeated])
        else:
            items[repeated] = rng.integers(0, n_items, size=int(repeated.sum()))
    else:
        keep = ~_repeated(user, items, n_items)
        user, items, position = user[keep], items[keep], position[keep]
    return user, items, position


def _lengths(rng, cfg: SyntheticConfig, n_users: int) -> np.ndarray:
    drawn = np.rint(rng.lognormal(np.log(cfg.mean_len), 0.5, size=n_users))
    return np.clip(drawn, cfg.min_len, cfg.max_len).astype(np.int64)


def _repeated(user: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Positions whose (user, item) pair occurred at an earlier position."""
    keys = user.astype(np.int64) * n_items + items
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = np.zeros(len(keys), dtype=bool)
    repeated[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
    return repeated


def write_atomic(data: SyntheticData, output: Path, name: str | None = None) -> tuple[Path, Path]:
    """Write ``<name>.inter`` (user_id, item_id, timestamp) and ``<name>.item`` (item_id, category)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    name = name or output.name
    inter_path = output / f"{name}.inter"
    item_path = output / f"{name}.item"
    with open(inter_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(data.users.tolist(), data.items.tolist(), data.timestamps.tolist()):
            f.write(f"u{u}\tv{i}\t{t}\n")
    with open(item_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("item_id:token\tcategory:token\n")
        for i, c in enumerate(data.item_category.tolist(), start=1):
            f.write(f"v{i}\tc{c}\n")
    return inter_path, item_path


def main(argv=None) -> None:
    parser = OneLineArgumentParser(
        prog="python -m recbole_cmi synthetic",
        description="Generate a synthetic micro-video dataset in RecBole atomic format.",
    )
    parser.add_argument("--output", required=True, help="output folder, e.g. dataset/micro_video")
    parser.add_argument("--name", default=None, help="file stem (default: the folder name)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="micro_video", help="settings to start from (default micro_video)"
    )
    for field in dataclasses.fields(SyntheticConfig):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=None, help="overrides the preset")
    args = parser.parse_args(argv)
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig) if getattr(args, f.name) is not None
    }
    cfg = dataclasses.replace(PRESETS[args.preset], **given)
    try:
        data = generate(cfg)
        inter_path, item_path = write_atomic(data, Path(args.output), args.name)
    except (ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    lengths = np.bincount(data.users)[1:]
    print(
        f"wrote {inter_path} ({len(data.users)} interactions, {cfg.n_users} users, "
        f"{len(np.unique(data.items))} items used of {cfg.n_items}; sequence length mean "
        f"{lengths.mean():.1f}, median {np.median(lengths):.0f}) and {item_path}"
    )


if __name__ == "__main__":
    main()
