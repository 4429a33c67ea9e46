"""What every command of ours shares: one error line instead of a traceback, and one argument vocabulary.

The vocabulary (``python -m recbole_cmi <verb>``, :mod:`recbole_cmi.__main__`): ``--model``, ``--dataset``,
``--config_files`` (:func:`config_file_names`, :func:`check_config_files`), and any config key as ``--key=value``, read by
:func:`config_values` with the config's own value conversion (:func:`recbole_cmi.options.literal_value`). A model
with settings is ``Model:key=value,key=value`` with an optional ``label=`` (:func:`parse_model_variants`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from dataclasses import dataclass, field

from recbole_cmi.errors import ConfigValueError, RecboleCmiError
from recbole_cmi.options import literal_value
from recbole_cmi.paths import describe_unreadable

# Warnings RecBole 1.2.1 triggers on every run with current pandas/torch (chained-assignment
# fillna, torch.cuda.amp.GradScaler); harmless, and they would bury the one-line messages.
_RECBOLE_MODULES = r"recbole(\.|$)"


TRUST_HELP = (
    "also load a checkpoint that pickles Python objects (RecBole's, or recbole_cmi's before 0.2): unpickling runs "
    "any code a crafted file holds, so use it only for files you trust (python -m recbole_cmi checkpoint upgrade "
    "converts one for good)"
)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), like our other errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def quiet_recbole_warnings() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module=_RECBOLE_MODULES)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_RECBOLE_MODULES)


def run_cli(action) -> int:
    """Run ``action()``; report a user error (or any other failure) as one line on stderr."""
    if not os.environ.get("RECBOLE_CMI_TRACEBACK"):
        quiet_recbole_warnings()
    try:
        return int(action() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RecboleCmiError as err:
        if os.environ.get("RECBOLE_CMI_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # RecBole or torch failed on input we did not anticipate
        if os.environ.get("RECBOLE_CMI_TRACEBACK"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"error: {type(err).__name__}: {message} (set RECBOLE_CMI_TRACEBACK=1 for the full traceback)",
            file=sys.stderr,
        )
        return 1


# ------------------------------------------------------------------------------------ the argument vocabulary
def config_values(rest: list[str], parser: argparse.ArgumentParser) -> dict:
    """The ``--key=value`` arguments argparse left over, as config values; anything else is a usage error.

    Values are read as the config reads them (numbers, lists, dicts, None, True/False in any case; anything
    else stays a string; nothing is evaluated). A key given twice with two values is refused, as RecBole's
    own command line does.
    """
    unknown = [arg for arg in rest if not arg.startswith("--") or "=" not in arg or arg.startswith("--=")]
    if unknown:
        parser.error(f"unrecognised arguments {' '.join(unknown)}: config keys are given as --key=value")
    values, given = {}, {}
    for arg in rest:
        key, _, text = arg[2:].partition("=")
        if key in given and given[key] != text:
            parser.error(f"--{key} given twice with different values ({given[key]!r} and {text!r})")
        given[key], values[key] = text, literal_value(text)
    return values


def parse_with_config_values(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, dict]:
    """``parser``'s own options, and the further ``--key=value`` config values (:func:`config_values`)."""
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args, config_values(rest, parser)


def config_file_names(groups) -> list[str]:
    """``--config_files`` (``nargs="*"``; each argument may hold several space-separated names), flattened."""
    return [name for group in (groups or []) for name in str(group).split()]


def check_config_files(paths) -> list[str]:
    """``paths``, after checking that each is a readable file: else a :class:`ConfigValueError` naming it (the
    same line the config gives when it reads the file), before any work starts."""
    for path in paths:
        problem = describe_unreadable(path, "config file")
        if problem:
            raise ConfigValueError(problem)
    return list(paths)


# ------------------------------------------------------------------------------------ model variants
@dataclass
class ModelVariant:
    """One ``--models`` entry: ``Model:key=value,key=value`` with an optional ``label=``.

    ``text`` is the entry as written (without ``label=``), ``name`` the part before ``:`` (a model, or a name the
    command resolves, such as an ablation alias), ``label`` the ``label=`` value or None.
    """

    text: str
    name: str
    overrides: dict = field(default_factory=dict)
    label: str | None = None


_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# A separator starts a new pair only when ``key=`` follows it, so values may hold ``:`` or ``;`` (gpu_id=0:1).
_PAIR_START = re.compile(r"\s*[A-Za-z_][\w.]*\s*=")


def parse_model_variants(text: str, option: str = "--models") -> list[ModelVariant]:
    """``"CMI,CMI:num_interest=4,cl_weight=0,label=Wide,SASRec"`` -> three variants.

    Entries are separated by commas; after an entry's ``:``, a comma followed by ``key=`` is one more setting of
    that entry, a comma followed by a name the next entry. Values are read as ``--key=value`` values are
    (:func:`config_values`). The earlier spellings ``Label:key=value;key=value`` (robustness) and
    ``Model:key=value:key=value`` (speed benchmark) are still read, with a note on stderr.
    """
    entries, old_separators = [], set()  # entries: [name, [pairs]]
    for piece in _cut_keeping_separators(text, ",;:"):
        separator, body = (piece[0], piece[1:]) if piece[:1] in ",;:" else ("", piece)
        starts_pair = bool(_PAIR_START.match(body))
        if separator in ("", ","):
            if entries and entries[-1][1] and starts_pair:
                entries[-1][1].append(body)
            elif body.strip():
                entries.append([body.strip(), []])
        elif not entries:
            raise ConfigValueError(f"{option}: {text!r} starts with {separator!r} (expected Model:key=value)")
        elif separator == ":" and not entries[-1][1]:
            entries[-1][1].append(body)  # the entry's first setting
        elif starts_pair:
            old_separators.add(separator)
            entries[-1][1].append(body)
        elif entries[-1][1]:
            entries[-1][1][-1] += piece  # the separator belongs to the value
        else:
            raise ConfigValueError(f"{option}: unexpected {separator!r} in {text!r}")
    if old_separators:
        print(
            f"note: {option}: {' and '.join(repr(s) for s in sorted(old_separators))} between settings is the old "
            "spelling; write Model:key=value,key=value (with label=Name to name a variant)",
            file=sys.stderr,
        )
    if not entries:
        raise ConfigValueError(f"{option}: no model given")
    return [_variant(name, pairs, option) for name, pairs in entries]


def _variant(name: str, pairs: list[str], option: str) -> ModelVariant:
    written = f"{name}:{','.join(pairs)}" if pairs else name
    if not _NAME.fullmatch(name):
        raise ConfigValueError(f"{option}: bad model name {name!r} (expected Model or Model:key=value,key=value)")
    overrides, label, kept = {}, None, []
    for pair in pairs:
        key, eq, value = (part.strip() for part in pair.partition("="))
        if not eq or not key:
            raise ConfigValueError(f"{option}: {written!r}: expected Model:key=value,key=value, got {pair.strip()!r}")
        if key == "label":
            label = value
        else:
            overrides[key] = literal_value(value)
            kept.append(f"{key}={value}")
    return ModelVariant(f"{name}:{','.join(kept)}" if kept else name, name, overrides, label)


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` cut at ``separator`` outside brackets: ``"a=[1,2],b=3"`` -> ``["a=[1,2]", "b=3"]``."""
    pieces = (piece.removeprefix(separator).strip() for piece in _cut_keeping_separators(text, separator))
    return [piece for piece in pieces if piece]


def _cut_keeping_separators(text: str, separators: str) -> list[str]:
    """``text`` cut before each separator outside brackets, the separator kept at the start of its piece."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[({"
        depth -= ch in "])}"
        if ch in separators and depth == 0:
            parts.append(current)
            current = ch
        else:
            current += ch
    parts.append(current)
    return [part for part in parts if part.strip(separators + " ")]
