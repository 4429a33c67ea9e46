"""Converters from public micro-video logs to RecBole atomic files (``python -m recbole_cmi.data.convert``).

Each source module (``microlens``, ``wechat``, ``kuairec``) documents its input files, its
positive-interaction rule, how it derives timestamps and categories, and adds its own options. What
they share: ``inputs`` (the options every source takes, checked before any input is read, and checked
reading of the source files) and ``common`` (deduplication, k-core filtering, writing, statistics);
``__main__`` is the command line.
"""

SOURCES = ("microlens", "wechat", "kuairec")
