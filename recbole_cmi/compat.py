"""RecBole 1.2.1 on today's NumPy / PyTorch.

Each patch is idempotent and a no-op where the installed library does not need it; ``apply()``
runs them all and is called once when ``recbole_cmi`` is imported (``__init__``).

* NumPy 2 removed ``np.float_``/``np.complex_``/``np.unicode_``, which RecBole's
  ``Config.compatibility_settings`` reads on every ``Config`` construction; RecBole code still
  uses the aliases ``np.float``/``np.long``/``np.bool`` it creates there. We set the same
  aliases from names that exist in both NumPy 1 and 2.
* ``torch.load`` defaults to ``weights_only=True`` from torch 2.6 on, and RecBole's checkpoints
  pickle the whole ``Config``. We keep the safe default: our checkpoints hold plain data
  (:mod:`recbole_cmi.checkpoint`), and nothing here switches it off.
* Importing ``recbole.model.sequential_recommender`` (any core sequential model) runs
  ``torch.autograd.set_detect_anomaly(True)`` for the whole process (``sine.py``).
  :func:`disable_anomaly_mode` switches it back off; the runner calls it after every model
  lookup and before training.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
}


def _numpy_needs_aliases() -> bool:
    return not hasattr(np, "float_")  # NumPy >= 2


def _set_numpy_aliases(_config=None) -> None:
    for name, value in _NUMPY_ALIASES.items():
        setattr(np, name, value)


def patch_numpy_aliases() -> bool:
    """Make ``recbole.config.Config`` construct under NumPy 2. Returns True if a patch was applied."""
    if not _numpy_needs_aliases():
        return False
    from recbole.config.configurator import Config

    if Config.compatibility_settings is not _set_numpy_aliases:
        Config.compatibility_settings = _set_numpy_aliases
    _set_numpy_aliases()  # RecBole modules used before any Config exists need them too
    return True


def disable_anomaly_mode() -> bool:
    """Switch off autograd anomaly detection; returns whether it was on."""
    was_on = torch.is_anomaly_enabled()
    if was_on:
        torch.autograd.set_detect_anomaly(False)
    return was_on


def apply() -> None:
    patch_numpy_aliases()
    disable_anomaly_mode()
