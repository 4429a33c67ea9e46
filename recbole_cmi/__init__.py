"""recbole_cmi: CMI (Li et al., SIGIR 2022) and multi-interest baselines as a RecBole plugin."""

__version__ = "0.1.0"

from recbole_cmi import compat as _compat

_compat.apply()
