"""RecBole's ``.hyper`` search-space files, parsed strictly and turned into Ray Tune spaces.

One parameter per line, ``<name> <type> <values>``, as RecBole's ``HyperTuning`` reads them:

* ``choice [v1, v2, ...]``: a Python literal list (numbers, strings, lists, booleans, None);
* ``uniform a,b``: a float drawn uniformly from [a, b];
* ``quniform a,b,q``: uniform, rounded to a multiple of q; with whole-number a, b and q the
  values are ints (``tune.qrandint``), so sizes such as ``hidden_size`` can be searched;
* ``loguniform a,b``: log-uniform on [e^a, e^b]: a and b are natural logarithms, as in RecBole
  (``learning_rate loguniform -8,-4`` searches 3.4e-4 .. 1.8e-2).

Blank lines and lines starting with ``#`` are skipped. Anything else that does not parse is an
error naming the file and line, unlike RecBole, which skips short lines silently.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import dataclass
from pathlib import Path

from recbole_cmi.errors import ConfigValueError

ACCEPTED_FORMS = (
    "'<name> choice [v1, v2, ...]', '<name> uniform a,b', '<name> quniform a,b,q' or "
    "'<name> loguniform a,b' (a, b natural-log bounds)"
)
KINDS = ("choice", "uniform", "quniform", "loguniform")
# Set by the search itself for every trial; searching them would break it.
RESERVED = ("model", "dataset", "data_path", "checkpoint_dir", "gpu_id")


@dataclass(frozen=True)
class HyperParam:
    name: str
    kind: str
    values: tuple
    line: int

    def to_ray(self, grid: bool = False):
        """This dimension as a Ray Tune domain (``grid``: choices become ``grid_search``)."""
        from ray import tune

        if self.kind == "choice":
            return tune.grid_search(list(self.values)) if grid else tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "quniform":
            low, high, q = self.values
            if all(float(v).is_integer() for v in self.values):
                return tune.qrandint(int(low), int(high), int(q))
            return tune.quniform(low, high, q)
        low, high = self.values
        return tune.loguniform(math.exp(low), math.exp(high))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice {list(self.values)}"
        if self.kind == "loguniform":
            low, high = self.values
            return f"loguniform e^{low:g}..e^{high:g} ({math.exp(low):.3g}..{math.exp(high):.3g})"
        return f"{self.kind} {','.join(f'{v:g}' for v in self.values)}"


def parse_hyper_text(text: str, source: str = "<text>") -> list[HyperParam]:
    params: list[HyperParam] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        param = _parse_line(line, source, number)
        if param.name in seen:
            raise ConfigValueError(
                f"{source}, line {number}: parameter '{param.name}' is already defined on line {seen[param.name]}"
            )
        seen[param.name] = number
        params.append(param)
    if not params:
        raise ConfigValueError(f"{source}: no parameters to search; each line is {ACCEPTED_FORMS}")
    return params


def parse_hyper_file(path) -> list[HyperParam]:
    """Parse a ``.hyper`` file; a missing file or a malformed line is a :class:`ConfigValueError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigValueError(f"cannot read params file {path}: {err.strerror or err}") from err
    return parse_hyper_text(text, str(path))


def to_search_space(params: list[HyperParam], grid: bool = False) -> dict:
    return {p.name: p.to_ray(grid) for p in params}


def choice_combinations(params: list[HyperParam]) -> int | None:
    """How many different points a choice-only space has; None where a dimension is continuous."""
    if not params or any(p.kind != "choice" for p in params):
        return None
    return math.prod(len(p.values) for p in params)


def distinct_choice_points(params: list[HyperParam], count: int, seed: int | None) -> list[dict] | None:
    """``count`` different points of a choice-only space, drawn uniformly without replacement.

    Ray's random search draws every trial independently, so over a small discrete space it repeats
    points (a trial wasted each time); these points are given to it instead. None where a dimension
    is continuous (a repeat has probability 0 there). ``count`` is capped at the number of points.
    """
    total = choice_combinations(params)
    if total is None:
        return None
    points = []
    for index in random.Random(seed).sample(range(total), min(count, total)):
        point = {}
        for param in reversed(params):  # the index in mixed radix, last dimension fastest
            index, position = divmod(index, len(param.values))
            point[param.name] = param.values[position]
        points.append({param.name: point[param.name] for param in params})
    return points


def _parse_line(line: str, source: str, number: int) -> HyperParam:
    where = f"{source}, line {number}"
    parts = line.split(None, 2)
    if len(parts) < 3:
        raise ConfigValueError(f"{where}: cannot parse '{line}'; expected {ACCEPTED_FORMS}")
    name, kind, rest = parts
    if kind not in KINDS:
        raise ConfigValueError(f"{where}: unknown type '{kind}' for '{name}'; expected {ACCEPTED_FORMS}")
    if name in RESERVED:
        raise ConfigValueError(f"{where}: '{name}' is set by the search itself and cannot be searched")
    if kind == "choice":
        return HyperParam(name, kind, _parse_choice(rest, where, name), number)
    return HyperParam(name, kind, _parse_bounds(kind, rest, where, name), number)


def _parse_choice(rest: str, where: str, name: str) -> tuple:
    try:
        values = ast.literal_eval(rest)
    except (ValueError, SyntaxError) as err:
        raise ConfigValueError(
            f"{where}: choice values of '{name}' are not a Python literal list ({err.__class__.__name__}: "
            f"{rest}); expected {ACCEPTED_FORMS}"
        ) from err
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigValueError(f"{where}: choice values of '{name}' must be a non-empty list, got {rest}")
    return tuple(values)


def _parse_bounds(kind: str, rest: str, where: str, name: str) -> tuple:
    expected = 3 if kind == "quniform" else 2
    pieces = [piece.strip() for piece in rest.split(",")]
    try:
        numbers = tuple(float(piece) for piece in pieces)
    except ValueError:
        numbers = ()
    if len(numbers) != expected or not all(math.isfinite(v) for v in numbers):
        form = "a,b,q" if kind == "quniform" else "a,b"
        raise ConfigValueError(f"{where}: '{name} {kind}' needs {expected} finite numbers {form}, got '{rest}'")
    if numbers[0] >= numbers[1]:
        raise ConfigValueError(f"{where}: '{name} {kind}' needs a < b, got '{rest}'")
    if kind == "quniform" and numbers[2] <= 0:
        raise ConfigValueError(f"{where}: '{name} quniform' needs a step q > 0, got '{rest}'")
    return numbers
