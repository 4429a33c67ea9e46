"""The yaml side of the config: recbole_cmi's property layers, a safe loader with RecBole's floats, reading a file.

:func:`property_layers` lists the files ``properties/overall.yaml``, ``model/<Model>.yaml``,
``dataset/<dataset>.yaml`` and ``tuned/<dataset>/<Model>.yaml`` (unless ``use_tuned_values: False``) that
:class:`recbole_cmi.config.Config` layers over RecBole's; :func:`load_yaml_mapping` reads a config file or one of
them with :class:`SafeConfigLoader`, turning every problem into one line that names the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from recbole_cmi.errors import ConfigValueError
from recbole_cmi.paths import describe_unreadable, properties_dir


def tuned_layer_path(model: str, dataset: str) -> Path:
    """``properties/tuned/<dataset>/<Model>.yaml``: the values a search on that dataset's validation split found."""
    return properties_dir() / "tuned" / str(dataset) / f"{model}.yaml"


def property_layers(model: str, dataset: str, tuned: bool = True) -> list[Path]:
    """recbole_cmi's yaml files for a run, lowest priority first (those that exist); ``tuned=False`` drops
    the tuned layer."""
    root = properties_dir()
    layers = (
        root / "overall.yaml",
        root / "model" / f"{model}.yaml",
        root / "dataset" / f"{dataset}.yaml",
        *((tuned_layer_path(model, dataset),) if tuned else ()),
    )
    return [path for path in layers if path.is_file()]


def uses_tuned_values(external: dict) -> bool:
    """``use_tuned_values`` as the user gave it (default True); anything but a boolean is a ConfigValueError."""
    value = external.get("use_tuned_values", True)
    if not isinstance(value, bool):
        raise ConfigValueError(f"invalid config value use_tuned_values={value!r} (True or False)")
    return value


# RecBole's float resolver (``Config._build_yaml_loader``: "1e-3" is a float, not a string), on a
# SafeLoader subclass: python tags (``!!python/name:``, ``!!python/object``) are refused, and the
# process-wide yaml.FullLoader that RecBole edits in place is left alone.
_YAML_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class SafeConfigLoader(yaml.SafeLoader):
    """yaml's SafeLoader with RecBole's float spelling."""


SafeConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))


def load_yaml_mapping(path, what: str = "yaml file") -> dict:
    """A yaml file holding a mapping, read safely; every problem is one line naming the file (and line)."""
    path = str(path)
    problem = describe_unreadable(path, what)
    if problem:
        raise ConfigValueError(problem)
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=SafeConfigLoader)
    except UnicodeDecodeError as err:
        raise ConfigValueError(f"{what} {path} is not UTF-8 text (byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or (str(err).strip().splitlines() or [""])[0]
        if "python/" in str(err):
            problem = f"{problem} (python tags are refused: config files hold data, not code)"
        raise ConfigValueError(f"{what} {path}{where}: not valid yaml: {problem}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigValueError(
            f"{what} {path} must hold 'key: value' lines (a yaml mapping), not a {type(loaded).__name__}"
        )
    return loaded
