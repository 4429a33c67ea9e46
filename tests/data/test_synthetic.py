"""recbole_cmi.data.synthetic: byte-for-byte reproducibility, statistical shape, bad settings; both modes (exact and
fast) of the one generator."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from recbole_cmi.data.synthetic import PRESETS, SECONDS_PER_DAY, SyntheticConfig, generate, main, write_atomic
from recbole_cmi.paths import bundled_dataset_dir

SMALL = SyntheticConfig(n_users=200, n_items=300, n_categories=8, min_len=5, max_len=40, seed=11)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_settings_give_identical_bytes(tmp_path):
    first = write_atomic(generate(SMALL), tmp_path / "a" / "small")
    second = write_atomic(generate(SMALL), tmp_path / "b" / "small")
    assert [sha256(p) for p in first] == [sha256(p) for p in second]
    other = write_atomic(generate(dataclasses.replace(SMALL, seed=12)), tmp_path / "c" / "small")
    assert sha256(other[0]) != sha256(first[0])


def test_the_documented_command_regenerates_the_bundled_dataset(tmp_path, capsys):
    # python -m recbole_cmi.data.synthetic --output dataset/micro_video  (all defaults)
    main(["--output", str(tmp_path / "micro_video")])
    assert "wrote " in capsys.readouterr().out
    for suffix in ("inter", "item"):
        bundled = bundled_dataset_dir() / "micro_video" / f"micro_video.{suffix}"
        assert sha256(tmp_path / "micro_video" / f"micro_video.{suffix}") == sha256(bundled), suffix


# The fast mode's files for two settings, as the speed benchmark's own vectorised generator wrote them before it
# became this mode of generate: moving it changed no draw.
FAST_PINNED = [
    (
        SyntheticConfig(n_users=50, n_items=300, seed=1),
        None,
        "cceaecc857d7c63c5c13cbae5f3c07bd35dd92dbcd90b68829baac3d9d0f48cd",
        "ecb8b918e7a6a9a895ea7562c40aa03ebf0e797ac2d135dbc8dbed7c68ca80db",
    ),
    (
        SyntheticConfig(n_items=2000, seed=3),
        20_000,
        "78c8a877f8b0afe59240d6605b55e61c7e9ced5c518da1179383058d8bd0c9b5",
        "0c13b767bc951934438d6c5acb6372bce7f811591ba850038c262111c399d1cd",
    ),
]


@pytest.mark.parametrize(("cfg", "n_interactions", "inter_sha", "item_sha"), FAST_PINNED)
def test_the_fast_mode_writes_the_pinned_bytes(tmp_path, cfg, n_interactions, inter_sha, item_sha):
    inter, item = write_atomic(generate(cfg, fast=True, n_interactions=n_interactions), tmp_path / "fast", "fast")
    assert (sha256(inter), sha256(item)) == (inter_sha, item_sha)


def test_the_fast_mode_keeps_the_simulation_and_is_seeded():
    cfg = SyntheticConfig(n_items=2000, seed=3)
    data = generate(cfg, fast=True, n_interactions=20_000)
    again = generate(cfg, fast=True, n_interactions=20_000)
    for field in ("users", "items", "timestamps", "item_category"):
        np.testing.assert_array_equal(getattr(data, field), getattr(again, field))
    other = generate(SyntheticConfig(n_items=2000, seed=4), fast=True, n_interactions=20_000)
    assert not np.array_equal(other.items, data.items)

    n = len(data.users)
    assert 20_000 - cfg.max_len < n <= 20_000
    lengths = np.bincount(data.users)[1:]
    assert lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len
    assert data.items.min() >= 1 and data.items.max() <= cfg.n_items
    pairs = data.users.astype(np.int64) * (cfg.n_items + 1) + data.items
    assert len(np.unique(pairs)) == n  # no user sees an item twice
    same_user = data.users[1:] == data.users[:-1]
    assert (np.diff(data.timestamps)[same_user] > 0).all()  # strictly increasing inside a user
    assert data.timestamps.max() < cfg.n_days * SECONDS_PER_DAY + cfg.max_len
    # Sessions stay inside one interest: consecutive items share a category far more often than 1/16.
    category = data.item_category[data.items - 1]
    assert (category[1:] == category[:-1])[same_user].mean() > 0.5
    # Zipf inside a category: its most popular item is consumed far more than its median item.
    counts = np.bincount(data.items, minlength=cfg.n_items + 1)[1:]
    in_first = counts[data.item_category == 0]
    assert in_first.max() > 5 * max(np.median(in_first), 1)


def test_the_fast_mode_with_a_fixed_number_of_users_and_its_bad_settings():
    data = generate(SyntheticConfig(n_users=50, n_items=300, seed=1), fast=True)
    assert data.users.max() == 50 and len(np.unique(data.users)) == 50
    with pytest.raises(ValueError, match="max_len .* must be <= n_items / 2"):
        generate(dataclasses.replace(SMALL, max_len=200), fast=True)
    with pytest.raises(ValueError, match="n_interactions sizes the fast mode only"):
        generate(SMALL, n_interactions=1000)


def read_inter(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    users, items, stamps = zip(*(line.split("\t") for line in lines[1:]))
    return np.array([int(u[1:]) for u in users]), np.array([int(i[1:]) for i in items]), np.array(stamps, dtype=float)


def read_categories(path):
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return {int(item[1:]): int(cat[1:]) for item, cat in (line.split("\t") for line in lines)}


def check_shape(users, items, stamps, item_category, cfg: SyntheticConfig):
    """Properties every generated dataset has, with ``item_category[i]`` the category of item i."""
    # No user consumes an item twice.
    pairs = users.astype(np.int64) * (cfg.n_items + 1) + items
    assert len(np.unique(pairs)) == len(pairs)
    # Rows are grouped by user, in time order, strictly increasing per user.
    assert np.all(np.diff(users) >= 0)
    same_user = users[1:] == users[:-1]
    assert np.all(np.diff(stamps)[same_user] > 0)
    # Every item falls on one of the n_days days (a day-based split relies on it).
    assert stamps.min() >= 0 and stamps.max() < cfg.n_days * 86_400
    # Every user is present, with min_len..max_len items; ids are in range.
    lengths = np.bincount(users, minlength=cfg.n_users + 1)[1:]
    assert len(lengths) == cfg.n_users and lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len
    assert items.min() >= 1 and items.max() <= cfg.n_items
    # Sessions mostly stay in one category: consecutive items share it far more often than chance.
    cats = item_category[items]
    same_category = float(np.mean(cats[1:][same_user] == cats[:-1][same_user]))
    assert same_category > 0.4 and same_category > 4 / cfg.n_categories, same_category
    return same_category


def test_generated_data_has_the_documented_shape():
    data = generate(SMALL)
    item_category = np.concatenate([[-1], data.item_category])
    assert set(data.item_category.tolist()) == set(range(SMALL.n_categories))  # every category owns items
    check_shape(data.users, data.items, data.timestamps, item_category, SMALL)


def test_bundled_dataset_has_the_documented_shape():
    root = bundled_dataset_dir() / "micro_video"
    users, items, stamps = read_inter(root / "micro_video.inter")
    categories = read_categories(root / "micro_video.item")
    cfg = SyntheticConfig()
    assert sorted(categories) == list(range(1, cfg.n_items + 1))
    item_category = np.array([-1] + [categories[i] for i in range(1, cfg.n_items + 1)])
    check_shape(users, items, stamps, item_category, cfg)


def test_more_exploration_means_less_category_coherence():
    focused = generate(dataclasses.replace(SMALL, explore=0.0))
    scattered = generate(dataclasses.replace(SMALL, explore=1.0))

    def coherence(data):
        cats = np.concatenate([[-1], data.item_category])[data.items]
        same_user = data.users[1:] == data.users[:-1]
        return float(np.mean(cats[1:][same_user] == cats[:-1][same_user]))

    assert coherence(focused) > coherence(scattered) + 0.3


def _coherence(data):
    """Share of a user's consecutive items that come from the same latent category."""
    cats = np.concatenate([[-1], data.item_category])[data.items]
    same_user = data.users[1:] == data.users[:-1]
    return float(np.mean(cats[1:][same_user] == cats[:-1][same_user]))


def test_the_noisy_preset_scatters_histories_and_the_cli_applies_presets_under_flags(tmp_path, capsys):
    noisy = PRESETS["micro_video_noisy"]
    assert PRESETS["micro_video"] == SyntheticConfig()
    assert (noisy.n_users, noisy.n_items, noisy.n_categories) == (2000, 1200, 16)
    small = {"n_users": 200, "seed": 3}
    assert (
        _coherence(generate(dataclasses.replace(noisy, **small)))
        < _coherence(generate(dataclasses.replace(SyntheticConfig(), **small))) - 0.15
    )
    main(["--output", str(tmp_path / "noisy"), "--preset", "micro_video_noisy", "--n_users", "50", "--seed", "4"])
    expected = generate(dataclasses.replace(noisy, n_users=50, seed=4))
    assert len((tmp_path / "noisy" / "noisy.inter").read_text().splitlines()) == len(expected.users) + 1


BAD_SETTINGS = [
    ({"n_users": 0}, "n_users must be >= 1"),
    ({"n_categories": 1}, "n_categories must be >= 2"),
    ({"n_items": 5, "n_categories": 8}, "n_items (5) must be >= n_categories (8)"),
    ({"max_interests": 1}, "max_interests must be in [2, n_categories]"),
    ({"max_interests": 9}, "max_interests must be in [2, n_categories]"),
    ({"min_len": 1}, "need 2 <= min_len <= max_len"),
    ({"min_len": 30, "max_len": 20}, "need 2 <= min_len <= max_len"),
    ({"max_len": 200}, "max_len (200) must be <= n_items / 2"),
    ({"explore": 1.5}, "explore must be in [0, 1]"),
    ({"drift": -0.1}, "drift must be in [0, 1]"),
    ({"session_len": 0.5}, "session_len must be >= 1"),
    ({"n_days": 0}, "n_days must be >= 1"),
]


@pytest.mark.parametrize(("changes", "fragment"), BAD_SETTINGS)
def test_invalid_settings_raise_value_error(changes, fragment):
    with pytest.raises(ValueError, match="invalid synthetic dataset settings") as err:
        generate(dataclasses.replace(SMALL, **changes))
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--n_users", "0"], "error: invalid synthetic dataset settings: n_users must be >= 1, got 0"),
        (["--n_users", "many"], "error: argument --n_users: invalid int value: 'many'"),
        (["--explore", "2", "--drift", "3"], "explore must be in [0, 1], got 2.0; drift must be in [0, 1], got 3.0"),
        (["--bogus", "1"], "error: unrecognized arguments: --bogus 1"),
        ([], "error: the following arguments are required: --output"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, fragment):
    if argv:
        argv = ["--output", str(tmp_path / "out")] + argv
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], captured.err
    assert not (tmp_path / "out").exists()


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        main(["--output", str(blocker / "micro_video"), "--n_users", "3", "--n_items", "40"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
