#!/usr/bin/env bash
# The package installed bare (no extras) in a venv of its own: it must bring no torch, OpenCV,
# shapely, pyclipper or PyYAML, and the cache must work there end to end: the writer, the
# reader, validation and every cache command. The OCR commands must say what to install.
# Usage: bash tools/check_light_install.sh   (CI runs it; about 30 s, mostly pip)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
bin="$work/venv/bin"
"$py" -m pip install --quiet .

"$py" - "$work" <<'PY'
import importlib.util
import sys

import numpy as np

for name in ("torch", "cv2", "shapely", "pyclipper", "yaml"):
    assert importlib.util.find_spec(name) is None, f"the bare install brought {name}"

from lmdb_cache import CacheWriter, open_cache, validate_cache  # noqa: E402

store = f"{sys.argv[1]}/arrays.lmdb"
with CacheWriter(store, max_side=32) as writer:
    writer.add("a", image=np.zeros((64, 48, 3), np.uint8), extra={"label": 1})
with open_cache(store) as reader:
    assert reader["a"].image.shape == (32, 24, 3) and reader["a"].extra == {"label": 1}
assert validate_cache(store).ok
assert "torch" not in sys.modules, "importing lmdb_cache imported torch"
try:
    import lmdb_cache.torch  # noqa: F401
except ImportError as e:
    assert "needs PyTorch" in str(e), e
else:
    raise AssertionError("lmdb_cache.torch imported without torch")
print("light install: writer, reader and validation work without torch")
PY

"$py" tools/make_samples.py "$work/samples" --count 6 >/dev/null
"$bin/build-cache" "$work/samples" --max-side 640 -j 2
"$bin/validate-cache" "$work/samples.lmdb" --source "$work/samples"
"$bin/cache-info" "$work/samples.lmdb" >/dev/null
"$bin/lmdb-cache" copy "$work/samples.lmdb" "$work/copy.lmdb" >/dev/null

set +e
"$bin/ocr-train" --help >/dev/null 2>"$work/err"
status=$?
set -e
if [ "$status" -ne 2 ] || ! grep -q 'lmdb-image-cache\[ocr\]' "$work/err"; then
    echo "ocr-train without the [ocr] extra: exit $status, expected 2 and the install hint:" >&2
    cat "$work/err" >&2
    exit 1
fi
echo "light install: build-cache, validate-cache, cache-info, lmdb-cache copy work; ocr-train says what to install"
