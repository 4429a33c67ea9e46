"""Reproducible benchmarks: ``python -m recbole_cmi.benchmark <subcommand>`` (see ``__main__``).

``accuracy`` (:func:`recbole_cmi.benchmark.accuracy.run_benchmark`) trains every model x seed under
one shared config, each run in its own subprocess, and writes ``results/<dataset>/<protocol>.md``,
``.csv`` and ``.png``; ``tune`` (:func:`recbole_cmi.benchmark.tune.run_tuning`) gives every model the same
validation search and writes their ``properties/tuned/<dataset>/<Model>.yaml``. Nothing here is imported until a
subcommand is named.
"""
