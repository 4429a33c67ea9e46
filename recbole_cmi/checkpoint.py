"""Checkpoint files: a format that loads without running code, and the trust model around it.

RecBole (and recbole_cmi before 0.2) pickled the whole ``Config`` object into each checkpoint, so
reading one needed ``torch.load(weights_only=False)``: a full unpickler, which runs whatever code a
crafted file asks it to. Checkpoints are shared (papers, colleagues, model zoos), so that is code
execution on load. Our checkpoints now hold only what ``torch.load(weights_only=True)`` accepts:

* ``config``: ``{"final": ..., "external": ...}``, the config's values as plain data (numbers,
  strings, lists, dicts); RecBole's enums and ``torch.device`` are written as small tagged dicts
  and rebuilt on load (:func:`encode`, :func:`decode`);
* ``rng_state``: Python's state as a tuple of ints, NumPy's as a list, torch's as tensors;
* ``id_mapping``: a fingerprint of the user and item token <-> id mappings of the data the model
  was trained on (:func:`id_mapping_fingerprint`): the ids in the weights mean nothing on data
  whose mapping differs, so such data is refused instead of silently scoring other items;
* ``format``: :data:`FORMAT`, so other files are told apart.

:func:`load_checkpoint` always tries the safe loader. A file it refuses holds pickled objects: an
old checkpoint, or a crafted one. It is refused with one line unless the caller passes
``trust=True`` (the commands' ``--trust_checkpoint``), which loads it with the full unpickler — for
files you trust only. ``python -m recbole_cmi checkpoint upgrade OLD.pth --trust_checkpoint``
rewrites a trusted old file in the safe format once, so it never needs trust again.
"""

from __future__ import annotations

import enum
import hashlib
import os
import pickle
import sys
import warnings

import numpy as np
import torch

from recbole_cmi.errors import CheckpointError
from recbole_cmi.files import atomic_open
from recbole_cmi.paths import describe_unreadable

FORMAT = "recbole_cmi/1"
_ENUM_TAG = "__recbole_enum__"
_DEVICE_TAG = "__torch_device__"

TRUST_HINT = (
    "if you trust the file, pass --trust_checkpoint (trust=True from Python) to load it anyway, or convert it "
    "once with: python -m recbole_cmi checkpoint upgrade {path} --trust_checkpoint"
)


def _recbole_enums() -> dict[str, type[enum.Enum]]:
    from recbole.utils import enum_type

    return {
        name: value
        for name, value in vars(enum_type).items()
        if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == enum_type.__name__
    }


# ----------------------------------------------------------------------------- plain data


def encode(value):
    """``value`` as data ``torch.load(weights_only=True)`` accepts: NumPy values become Python
    ones, RecBole enums and devices tagged dicts; tensors, tuples and lists stay as they are."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(encode(v) for v in value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, enum.Enum):
        return {_ENUM_TAG: [type(value).__name__, value.name]}
    if isinstance(value, torch.device):
        return {_DEVICE_TAG: str(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise CheckpointError(f"cannot store a {type(value).__name__} in a checkpoint: {value!r}")


def decode(value):
    """The inverse of :func:`encode` (tagged dicts back to enums and devices)."""
    if isinstance(value, dict):
        if set(value) == {_ENUM_TAG}:
            enum_name, member = value[_ENUM_TAG]
            enums = _recbole_enums()
            if enum_name not in enums or member not in enums[enum_name].__members__:
                raise CheckpointError(f"unknown RecBole setting {enum_name}.{member} in the checkpoint's config")
            return enums[enum_name][member]
        if set(value) == {_DEVICE_TAG}:
            return torch.device(value[_DEVICE_TAG])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(decode(v) for v in value)
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode_config(config) -> dict:
    return {"final": encode(dict(config.final_config_dict)), "external": encode(dict(config.external_config_dict))}


def decode_config(data):
    from recbole_cmi.config import Config

    if not isinstance(data, dict) or not isinstance(data.get("final"), dict):
        raise CheckpointError("the checkpoint's config is not a mapping of settings")
    return Config.from_values(decode(data["final"]), decode(data.get("external") or {}))


def encode_rng_state(state: dict) -> dict:
    """NumPy's legacy state tuple holds an ndarray, which the safe loader refuses: store it as a list."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached)}


def decode_rng_state(state: dict) -> dict:
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    return {**state, "numpy": (name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached))}


# ----------------------------------------------------------------------------- id mapping


def id_mapping_fingerprint(dataset) -> dict:
    """``{field: {"count": n, "sha256": hex}}`` of the user and item token lists, in id order."""
    fingerprint = {}
    for field in (dataset.uid_field, dataset.iid_field):
        tokens = dataset.field2id_token[field]
        digest = hashlib.sha256("\x1f".join(str(t) for t in tokens).encode("utf-8")).hexdigest()
        fingerprint[field] = {"count": len(tokens), "sha256": digest}
    return fingerprint


def check_id_mapping(checkpoint: dict, dataset, path) -> None:
    """Refuse data whose user/item ids differ from those the checkpoint was trained with."""
    saved = checkpoint.get("id_mapping")
    if not saved:  # an upgraded old checkpoint: nothing recorded to compare with
        return
    now = id_mapping_fingerprint(dataset)
    for field, expected in saved.items():
        current = now.get(field)
        if current != expected:
            count = current["count"] if current else 0
            raise CheckpointError(
                f"checkpoint {path} was trained on data whose {field} ids differ from dataset "
                f"'{dataset.dataset_name}' now ({expected['count'] - 1} -> {count - 1} {field} tokens"
                f"{', same count but other order or tokens' if count == expected['count'] else ''}): its ids would "
                "point at other users and items; use the atomic files and filters it was trained with"
            )


# ----------------------------------------------------------------------------- files


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def load_checkpoint(path, map_location="cpu", trust: bool = False) -> dict:
    """Read a checkpoint without running code in it; ``trust=True`` also reads pickled (old) ones.

    Returns the checkpoint dict with ``config`` as a :class:`recbole_cmi.config.Config` and the
    random states as the generators take them. Every failure is a :class:`CheckpointError`.
    """
    path = str(path)
    problem = describe_unreadable(path, "checkpoint file")
    if problem:
        raise CheckpointError(problem)
    try:
        with warnings.catch_warnings():  # torch's multi-line note on protocol 4 files, which we refuse anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects (a checkpoint of RecBole or of recbole_cmi before "
                f"0.2, or a crafted file); loading it could run code, so it was not loaded; "
                + TRUST_HINT.format(path=path)
            ) from err
        checkpoint = _load_trusted(path, map_location)
    except Exception as err:  # truncated, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {_first_line(err)}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a RecBole/recbole_cmi checkpoint (no 'state_dict' entry)")
    if checkpoint.get("format") == FORMAT:
        checkpoint = dict(checkpoint)
        checkpoint["config"] = decode_config(checkpoint.get("config"))
        if checkpoint.get("rng_state") is not None:
            checkpoint["rng_state"] = decode_rng_state(checkpoint["rng_state"])
    return checkpoint


def _load_trusted(path: str, map_location) -> dict:
    # The user vouched for this file (--trust_checkpoint): the full unpickler, as RecBole loads it.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {_first_line(err)}") from err


def checkpoint_payload(state: dict) -> dict:
    """A checkpoint dict from a trainer's ``state`` (``config`` a Config, random states as captured)."""
    payload = {**state, "format": FORMAT, "config": encode_config(state["config"])}
    if state.get("rng_state") is not None:
        payload["rng_state"] = encode_rng_state(state["rng_state"])
    for key in ("best_valid_score", "best_valid_result", "id_mapping"):
        if key in payload:
            payload[key] = encode(payload[key])
    return payload


def atomic_torch_save(state, target) -> None:
    """Write ``state`` to ``target`` so that ``target`` is either the old file or the complete new one."""
    with atomic_open(target, "wb") as f:
        # torch's default protocol: the weights-only loader does not read protocol 4 (RecBole's).
        torch.save(state, f)


def upgrade(source, target=None) -> str:
    """Rewrite a trusted pickled checkpoint in the safe format; returns the new file's path."""
    source = str(source)
    checkpoint = load_checkpoint(source, trust=True)
    if checkpoint.get("format") == FORMAT:
        raise CheckpointError(f"{source} is already in the safe format ({FORMAT}); nothing to upgrade")
    config = checkpoint.get("config")
    if not hasattr(config, "final_config_dict"):
        raise CheckpointError(f"{source} has no RecBole config to convert (it cannot be reloaded either)")
    root, ext = os.path.splitext(source)
    target = str(target or f"{root}-safe{ext or '.pth'}")
    atomic_torch_save(checkpoint_payload(checkpoint), target)
    return target


def main(argv=None) -> int:
    from recbole_cmi.cli import OneLineArgumentParser, run_cli

    parser = OneLineArgumentParser(
        prog="python -m recbole_cmi checkpoint",
        description="Rewrite a checkpoint that pickles Python objects (RecBole's, or recbole_cmi's before 0.2) "
        "in the safe format that loads without running code.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="convert a trusted old checkpoint")
    up.add_argument("checkpoint", help="the old .pth file")
    up.add_argument("--out", default=None, help="where to write (default: <checkpoint>-safe.pth)")
    up.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="required: reading the old file unpickles it, which runs any code a crafted file holds",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.trust_checkpoint:
        parser.error(
            f"upgrading reads {args.checkpoint} with the full unpickler, which runs any code a crafted file holds; "
            "pass --trust_checkpoint if you trust where it came from"
        )

    def action():
        print(f"safe checkpoint: {upgrade(args.checkpoint, args.out)}")
        return 0

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
