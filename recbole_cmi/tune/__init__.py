"""Ray Tune hyper-parameter search (``run_hyper.py``); Ray is imported only when a search runs."""

from recbole_cmi.tune.search import SearchOutcome, SearchSettings, run_search
from recbole_cmi.tune.space import HyperParam, parse_hyper_file, parse_hyper_text, to_search_space

__all__ = [
    "HyperParam",
    "SearchOutcome",
    "SearchSettings",
    "parse_hyper_file",
    "parse_hyper_text",
    "run_search",
    "to_search_space",
]
