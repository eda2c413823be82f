"""The on-disk contract: what a store holds and how it is checked, with no LMDB environment open.

Owns ``schema`` (databases, keys, sealed msgpack records and their checks), ``codecs`` (how
pixels are stored, one object per codec), ``versions`` (format versions and the rule for which
a store needs), ``settings`` (what a store's settings allow: the pixel ceiling, the cap's
rounding, what they reproduce), ``identity`` (a store's identity: how a record is hashed, how
the hashes combine, where the manifest keeps them), ``lmdbfile`` (the data file's meta pages,
length and structure, read with plain reads) and ``extents`` (that a value lies inside the
file, before LMDB touches it). Imports only the package's shared modules (errors, geometry);
``read``, ``write`` and ``check`` import it.
"""
