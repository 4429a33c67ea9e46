"""Tools on trained checkpoints: inspect CMI's implicit categories, recommend for a user, robustness to noise.

The command-line entry points are ``python -m recbole_cmi.inspect``, ``python -m recbole_cmi.recommend`` and
``python -m recbole_cmi.robustness``; the work is done here so that it can be called from Python too.
"""
