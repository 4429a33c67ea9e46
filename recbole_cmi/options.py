"""Config values checked by type and range: one vocabulary for the config, the models and the data hooks.

An :class:`Option` says what a key accepts (a real boolean, an integer or a finite number in a
range, one of a few strings) and reports a bad value as one line naming the key. The options of
our yaml files are read from their own documentation: each key's comment starts with its type,
``# (int) ...``, and may end with its range, ``Range: >= 1``, ``Range: [0, 1)``, ``Range: > 0`` or
``Range in ['a', 'b']`` (:func:`documented_options`). So the yaml that tells a user what a key
means is also what the config checks before any data is loaded (``recbole_cmi.config``), and a
model that reads a key (:func:`flag`, :func:`integer`, :func:`real`, :func:`choice`) applies the
same rule when built outside that config.

Booleans are strict: ``True``/``False`` in yaml, ``--key=True``/``--key=False`` on the command line
(any case). ``"no"``, ``"False"`` as a quoted yaml string, ``0`` or ``1`` are refused, never read as
a truthy string.
"""

from __future__ import annotations

import ast
import functools
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

from recbole_cmi.errors import ConfigValueError


def literal_value(text: str):
    """A ``--key=value`` or config-dict string as the value it spells, never evaluated as code.

    What RecBole's ``eval`` turns into data is read the same way here (numbers, lists, dicts,
    tuples, None, True/False in any case); anything else, ``__import__('os')...`` included, stays
    the string it is.
    """
    stripped = text.strip()
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, (str, int, float, list, tuple, dict, bool)) or value is None else text


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Option:
    """What one key accepts. ``kind``: bool, int, real, choice, str, list, dict; ``None`` passes only with ``none_ok``."""

    kind: str
    low: float | None = None
    high: float | None = None
    lower_open: bool = False
    upper_open: bool = False
    choices: tuple = ()
    none_ok: bool = False

    def accepts(self, value) -> bool:
        if value is None:
            return self.none_ok
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "str":
            return isinstance(value, str) and value != ""
        if self.kind == "list":
            return isinstance(value, (list, tuple))
        if self.kind == "dict":
            return isinstance(value, dict)
        if self.kind not in ("int", "real") or not (is_int(value) if self.kind == "int" else is_real(value)):
            return False
        if self.low is not None and (value <= self.low if self.lower_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.upper_open else value <= self.high)

    def requirement(self) -> str:
        text = {
            "bool": "True or False",
            "str": "a non-empty string",
            "list": "a list",
            "dict": "a mapping",
            "choice": "one of " + ", ".join(map(repr, self.choices)),
        }.get(self.kind)
        if text is None:
            noun = "an integer" if self.kind == "int" else "a finite number"
            if self.low is not None and self.high is not None:
                text = (
                    f"{noun} in {'(' if self.lower_open else '['}{_num(self.low)}, "
                    f"{_num(self.high)}{')' if self.upper_open else ']'}"
                )
            elif self.low is not None:
                text = f"{noun} {'>' if self.lower_open else '>='} {_num(self.low)}"
            elif self.high is not None:
                text = f"{noun} {'<' if self.upper_open else '<='} {_num(self.high)}"
            else:
                text = noun
        return text + (" or None" if self.none_ok else "")

    def problem(self, key: str, value) -> str | None:
        """``"key=value (requirement)"`` when ``value`` is refused, else None."""
        return None if self.accepts(value) else f"{key}={value!r} ({self.requirement()})"

    def read(self, config, key: str, default=None):
        """``config[key]`` checked (``default`` when it is None); a bad value is a ConfigValueError."""
        value = config[key]
        if value is None and default is not None:
            value = default
        problem = self.problem(key, value)
        if problem:
            raise ConfigValueError(problem)
        return float(value) if self.kind == "real" and value is not None else value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# The vocabulary the models and hooks read their keys with.
def flag(config, key: str, default: bool | None = None) -> bool:
    return Option("bool").read(config, key, default)


def integer(config, key: str, minimum: int | None = None, default: int | None = None) -> int:
    return Option("int", low=minimum).read(config, key, default)


def real(config, key, low=None, high=None, lower_open=False, upper_open=False, default=None) -> float:
    return Option("real", low, high, lower_open, upper_open).read(config, key, default)


def choice(config, key: str, choices, default: str | None = None) -> str:
    return Option("choice", choices=tuple(choices)).read(config, key, default)


# ----------------------------------------------------------------------------- yaml documentation

_DOCUMENTED = re.compile(r"^(?P<key>[A-Za-z_]\w*)\s*:[^#\n]*#\s*\((?P<type>[^)]*)\)(?P<text>.*)$")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf)"
_RANGE_BOUND = re.compile(rf"Range:\s*(?P<op>>=|>|<=|<)\s*(?P<bound>{_NUMBER})")
_RANGE_INTERVAL = re.compile(
    rf"Range:\s*(?P<left>[\[(])\s*(?P<low>{_NUMBER})\s*,\s*(?P<high>{_NUMBER})\s*(?P<right>[\])])"
)
_RANGE_CHOICES = re.compile(r"Range in (?P<choices>\[[^\]]*\])")


def parse_documentation(type_text: str, text: str) -> Option | None:
    """The Option a yaml comment ``(type) ... Range...`` describes; None for types not checked here."""
    type_text = type_text.strip().lower()
    none_ok = type_text.endswith(" or none")
    base = type_text.removesuffix(" or none")
    if base.startswith("list"):  # metrics, topk: config.py checks them, RecBole's one-value forms included
        return None
    if base not in ("bool", "int", "float", "str", "dict"):
        return None
    if base in ("bool", "dict"):
        return Option(base, none_ok=none_ok)
    found = _RANGE_CHOICES.search(text)
    if found:
        return Option("choice", choices=tuple(ast.literal_eval(found["choices"])), none_ok=none_ok)
    kind = "int" if base == "int" else "real" if base == "float" else "str"
    found = _RANGE_INTERVAL.search(text)
    if found and kind != "str":
        high = float(found["high"])
        return Option(
            kind,
            low=float(found["low"]),
            high=None if math.isinf(high) else high,
            lower_open=found["left"] == "(",
            upper_open=found["right"] == ")" and not math.isinf(high),
            none_ok=none_ok,
        )
    found = _RANGE_BOUND.search(text)
    if found and kind != "str":
        bound, op = float(found["bound"]), found["op"]
        if op.startswith(">"):
            return Option(kind, low=bound, lower_open=op == ">", none_ok=none_ok)
        return Option(kind, high=bound, upper_open=op == "<", none_ok=none_ok)
    return Option(kind, none_ok=none_ok)


@functools.lru_cache(maxsize=64)
def _file_options(path: str, mtime: float) -> dict[str, Option]:
    options = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        found = _DOCUMENTED.match(line)
        if found:
            option = parse_documentation(found["type"], found["text"])
            if option is not None:
                options[found["key"]] = option
    return options


def documented_options(paths) -> dict[str, list[Option]]:
    """Every documented key of the yaml ``paths`` and the Options their comments give (a value must
    satisfy each: a tuned file's ``(float)`` does not lift the model file's ``Range: > 0``)."""
    options: dict[str, list[Option]] = {}
    for path in paths:
        path = Path(path)
        for key, option in _file_options(str(path), path.stat().st_mtime).items():
            options.setdefault(key, []).append(option)
    return options


# RecBole's own keys that every run reads, beyond what our yaml files document.
GENERAL_OPTIONS = {
    "epochs": Option("int", low=0),
    "train_batch_size": Option("int", low=1),
    "eval_batch_size": Option("int", low=1),
    "learning_rate": Option("real", low=0, lower_open=True),
    "weight_decay": Option("real", low=0, none_ok=True),
    "stopping_step": Option("int", low=0),
    "eval_step": Option("int"),
    "seed": Option("int"),
    "reproducibility": Option("bool"),
    "shuffle": Option("bool"),
    "use_gpu": Option("bool"),
    "repeatable": Option("bool"),
    "save_dataset": Option("bool"),
    "save_dataloaders": Option("bool"),
    "enable_amp": Option("bool"),
    "enable_scaler": Option("bool"),
    "show_progress": Option("bool"),
    "log_wandb": Option("bool"),
    "exclude_history_items": Option("bool"),
    "save_last_checkpoint": Option("bool", none_ok=True),
    "clip_grad_norm": Option("dict", none_ok=True),
}

_GPU_ID = re.compile(r"^\s*(\d+\s*(,\s*\d+\s*)*)?$")


def gpu_id_problem(value) -> str | None:
    """RecBole's ``gpu_id``: "" (the CPU), a device index, or indices separated by commas."""
    ok = (
        value is None
        or (is_int(value) and value >= 0)
        or (isinstance(value, str) and _GPU_ID.match(value) is not None)
        or (isinstance(value, (tuple, list)) and all(is_int(v) and v >= 0 for v in value))
    )
    if ok:
        return None
    return f'gpu_id={value!r} ("" for the CPU, or GPU indices such as 0 or "0,1")'
