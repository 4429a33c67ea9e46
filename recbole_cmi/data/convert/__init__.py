"""Converters from public micro-video logs to RecBole atomic files (``python -m recbole_cmi.data.convert``).

Each source module (``microlens``, ``wechat``, ``kuairec``) documents its input files, its
positive-interaction rule, how it derives timestamps and categories; ``common`` holds what they
share (checked reading, deduplication, k-core filtering, statistics, writing).
"""

SOURCES = ("microlens", "wechat", "kuairec")
