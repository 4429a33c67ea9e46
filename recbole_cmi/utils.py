"""Model lookup: recbole_cmi first, then RecBole core (the trainer lookup is ``recbole_cmi.trainer.get_trainer``).

Unlike ``recbole.utils.get_model`` this never imports ``recbole.model.exlib_recommender``
(which needs lightgbm/xgboost and turns an unknown name into a misleading
``ModuleNotFoundError``), answers an unknown name with the closest known ones, and switches
off the anomaly mode that importing RecBole's sequential package turns on.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from pathlib import Path

from recbole_cmi.compat import disable_anomaly_mode
from recbole_cmi.errors import UnknownModelError

# One file per model; the class name maps to its module.
PLUGIN_MODELS = {
    "CMI": "recbole_cmi.model.cmi",
    "ComiRecSA": "recbole_cmi.model.comirec_sa",
    "ComiRecDR": "recbole_cmi.model.comirec_dr",
    "CL4SRec": "recbole_cmi.model.cl4srec",
}

CORE_SUBMODULES = (
    "sequential_recommender",
    "general_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
)


def _core_model_files() -> dict[str, str]:
    """Lower-case model file name -> RecBole submodule, read from the file system (no imports)."""
    import recbole.model

    root = Path(recbole.model.__file__).parent
    found = {}
    for sub in CORE_SUBMODULES:
        for path in sorted((root / sub).glob("*.py")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, sub)
    return found


@functools.cache
def _core_class_names() -> dict[str, str]:
    """Lower-case model file name -> class name as written in the file (for suggestions)."""
    import recbole.model

    root = Path(recbole.model.__file__).parent
    names = {}
    for stem, sub in _core_model_files().items():
        try:
            text = (root / sub / f"{stem}.py").read_text(encoding="utf-8")
        except OSError:
            continue
        for name in re.findall(r"^class (\w+)\(", text, flags=re.M):
            if name.lower() == stem:
                names[stem] = name
    return names


def available_models() -> list[str]:
    return list(PLUGIN_MODELS)


def _core_class(module, model_name: str):
    cls = getattr(module, model_name, None)
    if cls is None:  # RecBole is case-sensitive; accept e.g. "sasrec" for "SASRec"
        for name in dir(module):
            if name.lower() == model_name.lower() and isinstance(getattr(module, name), type):
                return getattr(module, name)
    return cls


def get_model(model_name: str):
    """Return the model class for ``model_name`` (a recbole_cmi model or a RecBole core model)."""
    if not isinstance(model_name, str) or not model_name:
        raise UnknownModelError(f"model must be a non-empty name, got {model_name!r}")
    plugin = {name.lower(): name for name in PLUGIN_MODELS}.get(model_name.lower())
    if plugin is not None:  # case-insensitive, like the core lookup below
        try:
            module = importlib.import_module(PLUGIN_MODELS[plugin])
        except ModuleNotFoundError as err:
            if err.name != PLUGIN_MODELS[plugin]:
                raise  # the model's module exists but one of its imports is missing
            raise UnknownModelError(f"model '{plugin}' is not part of this recbole_cmi installation") from err
        return getattr(module, plugin)
    core = _core_model_files()
    sub = core.get(model_name.lower())
    if sub is not None:
        module = importlib.import_module(f"recbole.model.{sub}.{model_name.lower()}")
        disable_anomaly_mode()  # recbole.model.sequential_recommender's sine.py switches it on
        cls = _core_class(module, model_name)
        if cls is not None:
            return cls
    display = {name.lower(): name for name in PLUGIN_MODELS}
    for stem in core:
        display.setdefault(stem, _core_class_names().get(stem, stem))
    close = difflib.get_close_matches(model_name.lower(), list(display), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(display[c] for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model '{model_name}'. recbole_cmi models: {', '.join(PLUGIN_MODELS)}; "
        f"or any RecBole 1.2.1 core model (e.g. SASRec, GRU4Rec, BERT4Rec).{hint}"
    )


def train_batch_hooks(model_name: str):
    """The model's ``train_batch_hooks(config, dataset)`` builder for ``data_preparation``; None when it has none."""
    return getattr(get_model(model_name), "train_batch_hooks", None)
