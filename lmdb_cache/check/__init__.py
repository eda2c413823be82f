"""Proving a store intact and current, and moving it: ``validate-cache``, the start-up check for
changed sources, ``lmdb-cache copy``, ``lmdb-cache diff``.

Owns ``validate`` (every check of a store), ``findings`` (typed findings and the report),
``freshness`` (have sources changed since they were cached), ``copy`` (consistent, validated
copies), ``diff`` (what differs between two stores) and ``isolated`` (work on a damaged store
in a child process). Imports ``format``, ``read`` and, for copies, the write side's lock and
file helpers; never ``cli``.
"""
