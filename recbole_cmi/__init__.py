"""recbole_cmi: CMI (Li et al., SIGIR 2022) and multi-interest baselines as a RecBole plugin."""

__version__ = "0.2.0"  # 0.2: checkpoints in the safe format (recbole_cmi.checkpoint)

from recbole_cmi import compat as _compat

_compat.apply()
