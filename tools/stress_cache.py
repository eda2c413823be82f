"""Stress the image cache before a release and print the figures that prove it trustworthy.

Everything runs as real processes on real stores: the venv's console scripts (``build-cache``,
``validate-cache``, ``cache-info``), ``os.kill(pid, SIGKILL)``, DataLoader workers started with
fork, spawn and forkserver. One progress line per trial goes to stderr; at the end one summary
table per scenario goes to stdout, and with ``--json OUT`` to a file together with the machine
and the command line. Exit status: 0 every acceptance criterion met, 1 one failed, 2 usage
error. Sizes below the release sizes (60 kills, 500 flips, 2,000 epochs of 8 workers) are shown
as such in the summary but do not fail the run.

    python tools/stress_cache.py all --json stress.json     # the release run on sroie-dev
    python tools/stress_cache.py all --quick                # 8 generated images, tiny sizes
    python tools/stress_cache.py kills --kills 60           # one scenario
    python tools/stress_cache.py flips --flips 500 --seed 3 --work /tmp/stress --json f.json

Scenarios, with their time on sroie-dev (105 receipts, ``--max-side 512``, 2-core Xeon):

* ``kills`` (~7 s a trial): ``build-cache SRC -o OUT`` killed with SIGKILL after a random
  delay spread over the unkilled run, then the same console command again. Runs are fresh
  builds, updates (a fifth of the sources changed, a few added and removed) and ``--rebuild``
  with one of two ``--max-side``; two thirds go through the Python API with
  ``commit_images=8``, a third through the console script. A trial passes when validate-cache
  finds at worst "incomplete" in the killed state (or "format" when the first build had not
  committed yet), the re-run exits 0, no rebuild folder is left behind, and
  the store is valid, complete, holds exactly the source's keys and every record equals a
  fresh ``decode_file(path, max_side=...)`` (shape and CRC-32).
* ``readers`` (``--reader-seconds`` + ~6 s): an updater installs versions of 16 sources
  (each version paints another grey block, so a record's CRC-32 names its version; one version
  has an extra image) and updates the store again and again (every sixth update a
  ``--rebuild``, which swaps in a new store folder), while an ``open_cache(path,
  verify=True)`` loop and DataLoaders with fork, spawn and forkserver workers check snapshots.
  A snapshot is consistent when ``len(reader)``, its keys and the manifest's ``images`` agree,
  every record passes its CRC and equals a known version of its source, the pixel bytes add up
  to ``total_bytes`` and, when the manifest says ``complete``, every record comes from one
  version and the keys are exactly that version's. Any exception of a read is a read error.
* ``flips`` (~0.15 s a flip, two at a time on 2 cores): one XORed byte in a copy of ``data.mdb`` of
  a store that was built, updated and holds a failure entry, then ``validate-cache --json``.
  ``tools/stress/regions.py`` labels every byte (pixels, metadata, structure, free space) and
  the flips are stratified: 30% pixels, 25% metadata, 25% structure, 20% free space. Every
  flip in pixels or metadata must be reported; a crash (signal, traceback, hang, exit other
  than 0/1, not one JSON document on stdout) fails the run wherever it hit.
* ``truncate`` (~3 s): ``data.mdb`` cut to 0 and 4096 bytes and to 1/10/50/90/99% of its
  size; ``validate-cache``, ``cache-info``, ``open_cache(...)[key]`` and ``build-cache``
  (update) must each fail clearly: exit 1 or 2 and a message naming the store.
* ``crafted`` (~7 s): 20 hand-made stores (other DB flags, a foreign LMDB env, msgpack lists,
  a Timestamp, an extension type, deep nesting, format versions 1 and 99, lying sizes, a
  non-UTF-8 key, wrong things in place of the folder or of ``data.mdb``...), each given to
  ``validate-cache``, ``cache-info`` and ``open_cache()`` reading every record.
* ``nodes`` (~0.4 s a flip, two at a time): every byte of the header of the first node of
  every leaf page of the ``pixels`` database (size ``lo``/``hi``, ``flags``, ``ksize``),
  XORed with 0x01 and 0xFF, in a raw and a zstd store, and the size bytes of the ``meta``
  database's first nodes: each flipped store is read whole in a fresh process (every record
  owned and as a view, each checked against its CRC-32) and given to ``validate-cache``. Every
  read must raise a ``CacheError`` or give pixels matching their checksum; no signal anywhere
  (a size running past the file used to end the reader by SIGBUS inside py-lmdb's ``get``).
* ``forged`` (~2 s a case): sealed metadata the store's settings could not have produced
  (sides of 2^18 with and without an agreeing raw size, a 98 KB zstd frame declaring 65536 x
  16384 pixels, swapped sides, ``scale_x=1e-300``, a size off the cap's rounding, a manifest
  ceiling past the format's): ``validate-cache``, a reader and ``lmdb-cache copy`` must each
  exit 1 naming the store, with a peak resident memory under 1 GiB.
* ``concurrent`` (~9 s a trial): two ``build-cache`` on one output with different
  ``--max-side`` started together (fresh; both ``--rebuild``; an update against a rebuild):
  one must exit 2 naming the other's pid (or they serialize) and the store is never mixed.
* ``epochs`` (~0.18 s an epoch): a DataLoader with ``--workers`` fork workers and
  ``persistent_workers=False`` reads every record while a ``build-cache`` updates the store
  every 3 s. Bounded means: ``env.info()["num_readers"]`` and the rows of ``env.readers()``
  (the reader's own environment) at most 2 x workers + 4, and ``data.mdb`` at most 1.25 x
  its largest size over the first tenth of the epochs + 8 MiB.

``all`` runs them in that order: about 20 minutes at the release sizes (kills 7, epochs 6,
nodes 2-3, flips 1.2, readers 1.1, concurrent 0.9, truncate, crafted and forged 0.2 each),
about 80 s with ``--quick``. Scratch
files go to ``--work`` (kept) or to a temporary folder (removed).

The code lives in ``tools/stress/``: ``cli`` (options, order, report), ``common`` (processes,
outcomes, the shared context), one module per scenario (``kills``, ``readers``, ``flips``,
``damage`` for truncate and crafted, ``concurrent_builds``, ``epochs``), ``roles`` (the child
processes this script runs as ``_refs``, ``_build``, ...), ``regions`` and ``report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: only tools/ is on the path
    sys.path.insert(0, str(ROOT))

from tools.stress.cli import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios (or a child role) named in ``argv``; returns the exit status."""
    return run(list(sys.argv[1:] if argv is None else argv), __doc__.split("\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
