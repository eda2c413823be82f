"""The read side: readers of a store, one LMDB environment per store per process.

Owns ``reader`` (``CacheReader``, the mapping API, with ``order``: keys, positions, streams and
batches, and ``facts``: the manifest, settings and identity), ``handle`` (the process,
environment and snapshot behind a reader), ``snapshot`` (one read transaction and the one trip
of a read), ``environment`` (per-process environments, reader slots, exit hooks), ``forks``
(the fork hooks), ``records`` (``Record``), ``raw`` (raw access for integrity tools),
``positions`` (the key index and order a snapshot's positions come from, or a walk),
``mapping`` (where the mapping is, and advice to the kernel over it) and
``identity`` (the store's identity: from the manifest, or by a walk). Imports ``format`` and
the package's shared modules (errors, geometry); never ``write``, ``check`` or ``cli``.
"""
