"""Every config key RecBole 1.2.1 or recbole_cmi knows, for the config's unknown-key warning.

A key counts as known when a yaml file of RecBole or of ``properties/`` sets it, when code of either reads it
(``config["key"]``, ``config.get("key")``), or when RecBole sets it in code without a yaml default. RecBole's keys are
read once per process, ours once per properties folder.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import recbole
import yaml

from recbole_cmi.paths import properties_dir

# Keys RecBole sets or reads in code without a yaml default (distributed runs, derived values).
_CODE_ONLY_KEYS = {
    "model", "dataset", "config_files", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device",
    "single_spec", "local_rank", "nproc", "world_size", "offset", "ip", "port", "valid_metric_bigger",
}  # fmt: skip
_CONFIG_KEY_IN_CODE = re.compile(r"""config(?:\[|\.get\(|,)\s*["']([A-Za-z_]\w*)["']""")


def _yaml_keys(paths) -> set[str]:
    keys = set()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            keys.update(str(k) for k in loaded)
    return keys


def _code_keys(root: Path) -> set[str]:
    keys = set()
    for path in root.rglob("*.py"):
        try:
            keys.update(_CONFIG_KEY_IN_CODE.findall(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return keys


@functools.cache
def _recbole_config_keys() -> frozenset[str]:
    from recbole.utils import argument_list

    root = Path(recbole.__file__).resolve().parent
    keys = set(_CODE_ONLY_KEYS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name, []))
    yaml_files = [p for p in (root / "properties").rglob("*.yaml") if p.name not in ("url.yaml", "kg_url.yaml")]
    keys |= _yaml_keys(yaml_files)
    keys |= _code_keys(root)
    return frozenset(keys)


@functools.lru_cache(maxsize=8)
def _plugin_config_keys(properties: str) -> frozenset[str]:
    keys = _yaml_keys(Path(properties).rglob("*.yaml"))
    keys |= _code_keys(Path(__file__).resolve().parent)
    return frozenset(keys)


def known_config_keys() -> frozenset[str]:
    """Every config key that RecBole 1.2.1 or recbole_cmi defines in a yaml file or reads in code."""
    try:
        plugin = _plugin_config_keys(str(properties_dir()))
    except FileNotFoundError:
        plugin = frozenset()
    return _recbole_config_keys() | plugin
