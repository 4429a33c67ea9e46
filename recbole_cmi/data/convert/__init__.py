"""Converters from public micro-video logs to RecBole atomic files (``python -m recbole_cmi.data.convert``).

Each source module (``microlens``, ``wechat``, ``kuairec``) documents its input files, its
positive-interaction rule, how it derives timestamps and categories, and adds its own options;
``common`` holds what they share (the options every source takes, checked before any input is
read, checked reading, deduplication, k-core filtering, statistics, writing) and ``__main__`` the
command line.
"""

SOURCES = ("microlens", "wechat", "kuairec")
