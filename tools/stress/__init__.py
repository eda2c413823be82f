"""The cache stress tool behind ``tools/stress_cache.py``: one module per scenario.

``cli`` parses the options, runs the scenarios in order and prints the report; ``common`` holds
what they share (child processes, ``Outcome``, ``Ctx``); ``roles``, ``readers`` and ``epochs``
also hold the child roles the entry point runs; ``regions`` labels every byte of an LMDB file.
"""
