"""The write side: ``CacheWriter`` and ``build-cache``, one writer per store.

Owns ``writer`` (``CacheWriter``: add, remove, close), ``session`` (one writer's work on an
open store), ``pipeline``, ``decoding`` and ``outcomes`` (decoding in worker processes, typed
results in add order), ``index`` (what the store holds, and the format-version rule),
``commits`` (bounded transactions of whole records), ``store`` (the LMDB environment, map
growth, replacing a store), ``settings`` (the settings of a write and its manifest),
``locking`` (one build at a time), ``build`` (a folder synced through a writer), ``estimate``
and ``results``. Imports ``format`` and the shared modules (and ``check.isolated`` to read a
damaged store's settings); never ``read`` or ``cli``.
"""
