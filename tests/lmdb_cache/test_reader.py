"""The reader: mapping interface, zero-copy views, DataLoader workers, read-only filesystems,
and snapshots that stay consistent while a build updates the store."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from lmdb_cache import MissingImageError, SettingsMismatchError, build_cache, open_cache

from .conftest import TINY_SPEC


def _write_images(folder: Path, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random-noise PNGs of varied sizes; returns the expected upright RGB arrays by key."""
    rng = np.random.default_rng(seed)
    expected = {}
    for i in range(count):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        key = f"{'sub/' if i % 2 else ''}img_{i:03d}.png"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / key)
        expected[key] = pixels
    return expected


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("reader")
    expected = _write_images(root / "img", 12)
    result = build_cache(root / "img", root / "img.lmdb", workers=1)
    assert result.ok
    return root / "img.lmdb", expected


class KeyedDataset(Dataset):
    """Serves cache records by index, as a training dataset would."""

    def __init__(self, path: Path) -> None:
        self.reader = open_cache(path)
        self.keys = self.reader.keys()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.reader[self.keys[index]]
        return torch.from_numpy(record.image), os.getpid()


def test_len_iter_and_contains_match_the_source(store):
    path, expected = store
    with open_cache(path) as reader:
        assert len(reader) == len(expected)
        assert list(reader) == sorted(expected)
        assert "sub/img_001.png" in reader
        assert "img_999.png" not in reader


def test_getitem_returns_an_owned_writable_copy(store):
    path, expected = store
    with open_cache(path) as reader:
        record = reader["img_000.png"]
        np.testing.assert_array_equal(record.image, expected["img_000.png"])
        assert record.image.flags.writeable and record.image.flags.owndata
        record.image[:] = 0
        np.testing.assert_array_equal(reader["img_000.png"].image, expected["img_000.png"])


def test_view_is_read_only_and_shares_memory_with_the_map(store):
    path, expected = store
    with open_cache(path) as reader:
        first = reader.view("img_000.png").image
        again = reader.view("img_000.png").image
        np.testing.assert_array_equal(first, expected["img_000.png"])
        assert not first.flags.writeable
        assert np.shares_memory(first, again)


def test_meta_has_sizes_orientation_and_scale(store):
    path, expected = store
    with open_cache(path) as reader:
        meta = reader["sub/img_001.png"].meta
    h, w = expected["sub/img_001.png"].shape[:2]
    assert (meta["width"], meta["height"], meta["raw_width"], meta["raw_height"]) == (w, h, w, h)
    assert (meta["orientation"], meta["scale"]) == (1, 1.0)


def test_missing_key_raises_keyerror_naming_it(store):
    path, _ = store
    with open_cache(path) as reader, pytest.raises(KeyError, match="nope.png"):
        reader["nope.png"]


def test_missing_key_error_is_the_cache_error_type(store):
    path, _ = store
    with open_cache(path) as reader, pytest.raises(MissingImageError):
        reader["nope.png"]


def test_pickled_reader_reopens_lazily(store):
    path, expected = store
    reader = open_cache(path)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone["sub/img_003.png"].image, expected["sub/img_003.png"])
    clone.close()
    reader.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"], ids=str)
def test_dataloader_workers_return_the_direct_reads(store, method):
    path, _ = store
    dataset = KeyedDataset(path)
    direct = [dataset.reader[k].image for k in dataset.keys]
    loader = DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=2, multiprocessing_context=method
    )
    got = list(loader)
    assert len(got) == len(direct)
    for (tensor, _), want in zip(got, direct, strict=True):
        np.testing.assert_array_equal(tensor.numpy(), want)
    assert {pid for _, pid in got} - {os.getpid()}, "the samples came from worker processes"


def test_forked_child_does_not_disturb_the_parent_snapshot(store):
    """A child that reads (and so reopens) must leave the parent's open transaction usable."""
    path, expected = store
    reader = open_cache(path)
    before = reader.view("img_000.png").image
    pid = os.fork()
    if pid == 0:  # child: read, drop the reader, exit without running finalizers
        ok = np.array_equal(reader["img_002.png"].image, expected["img_002.png"])
        reader.close()
        del reader
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    np.testing.assert_array_equal(before, expected["img_000.png"])
    np.testing.assert_array_equal(reader["img_004.png"].image, expected["img_004.png"])
    reader.close()


_READ_SCRIPT = textwrap.dedent(
    """
    import sys
    from lmdb_cache import open_cache
    reader = open_cache(sys.argv[1])
    total = sum(int(reader[k].image.sum()) for k in reader)
    print(len(reader), total)
    """
)


def test_opens_on_a_read_only_filesystem(store, tmp_path):
    path, expected = store
    if shutil.which("unshare") is None:
        pytest.skip("needs 'unshare' to mount a read-only filesystem")
    src = tmp_path / "ro_src"
    shutil.copytree(path, src)
    (src / "lock.mdb").unlink(missing_ok=True)
    mount = tmp_path / "ro"
    mount.mkdir()
    script = tmp_path / "read.py"
    script.write_text(_READ_SCRIPT)
    command = (
        f"mount --bind -o ro {src} {mount} && "
        f"(touch {mount}/probe 2>/dev/null && echo WRITABLE || true) && "
        f"{sys.executable} {script} {mount}"
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if proc.returncode != 0 and "mount" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "WRITABLE" not in proc.stdout
    count, total = map(int, proc.stdout.split())
    assert count == len(expected)
    assert total == sum(int(a.sum()) for a in expected.values())


def test_lock_free_mode_reads_the_same_pixels(store, tmp_path):
    path, expected = store
    shutil.copytree(path, tmp_path / "copy.lmdb")
    with open_cache(tmp_path / "copy.lmdb", lock=False) as reader:
        assert not reader.locked
        np.testing.assert_array_equal(reader["img_000.png"].image, expected["img_000.png"])


def _build_in_child(src: Path, out: Path) -> None:
    code = (
        "import sys; from lmdb_cache import build_cache; "
        "build_cache(sys.argv[1], sys.argv[2], workers=1)"
    )
    subprocess.run([sys.executable, "-c", code, str(src), str(out)], check=True)


def test_snapshot_stays_consistent_while_a_build_updates_the_store(tmp_path):
    expected = _write_images(tmp_path / "img", 6, seed=1)
    build_cache(tmp_path / "img", tmp_path / "img.lmdb", workers=1)
    reader = open_cache(tmp_path / "img.lmdb")
    old_view = reader.view("img_000.png").image

    changed = np.full_like(expected["img_000.png"], 7)
    Image.fromarray(changed).save(tmp_path / "img" / "img_000.png")
    (tmp_path / "img" / "img_002.png").unlink()
    extra = _write_images(tmp_path / "more", 1, seed=2)
    shutil.copy(tmp_path / "more" / "img_000.png", tmp_path / "img" / "img_new.png")
    _build_in_child(tmp_path / "img", tmp_path / "img.lmdb")

    # The reader still sees the state it opened: all old records, unchanged pixels.
    assert sorted(reader) == sorted(expected)
    np.testing.assert_array_equal(reader["img_002.png"].image, expected["img_002.png"])
    np.testing.assert_array_equal(old_view, expected["img_000.png"])

    reader.refresh()
    assert "img_002.png" not in reader and "img_new.png" in reader
    np.testing.assert_array_equal(reader["img_000.png"].image, changed)
    np.testing.assert_array_equal(reader["img_new.png"].image, extra["img_000.png"])
    reader.close()


def test_exif_rotated_jpeg_reads_back_upright(tmp_path):
    rng = np.random.default_rng(3)
    raw = Image.fromarray(rng.integers(0, 256, size=(40, 64, 3), dtype=np.uint8))
    exif = raw.getexif()
    exif[0x0112] = 6
    (tmp_path / "img").mkdir()
    raw.save(tmp_path / "img" / "r.jpg", exif=exif, quality=95)
    build_cache(tmp_path / "img", tmp_path / "c.lmdb", workers=1)
    want = np.asarray(
        ImageOps.exif_transpose(Image.open(tmp_path / "img" / "r.jpg")).convert("RGB")
    )
    with open_cache(tmp_path / "c.lmdb") as reader:
        record = reader["r.jpg"]
    np.testing.assert_array_equal(record.image, want)
    assert (record.meta["raw_width"], record.meta["raw_height"], record.meta["orientation"]) == (
        64,
        40,
        6,
    )
    assert record.image.shape == (64, 40, 3)


# --- positions, streaming walks, settings -------------------------------------------------


def test_key_at_and_record_at_follow_storage_order(tiny_cache):
    expected = sorted(TINY_SPEC, key=lambda k: k.encode())
    with open_cache(tiny_cache) as reader:
        assert [reader.key_at(i) for i in range(len(reader))] == expected
        assert reader.key_at(-1) == expected[-1]
        assert reader.record_at(1).key == expected[1]
        np.testing.assert_array_equal(reader.record_at(2).image, reader[expected[2]].image)
        with pytest.raises(IndexError, match="outside the 6 records"):
            reader.key_at(6)
        with pytest.raises(TypeError, match="int"):
            reader.key_at("0")
        with pytest.raises(TypeError, match="record_at"):
            reader[0]


@pytest.mark.parametrize("chunk", [1, 2, 5, 6, 1024])
def test_iter_keys_and_items_stream_every_key_once(tiny_cache, chunk):
    with open_cache(tiny_cache) as reader:
        assert list(reader.iter_keys(chunk=chunk)) == reader.keys()
        pairs = list(reader.items())
        assert [k for k, _ in pairs] == reader.keys()
        for key, record in pairs:
            np.testing.assert_array_equal(record.image, reader[key].image)


def test_a_walk_sees_an_update_from_its_next_chunk_without_repeats(many_images, tmp_path):
    store = tmp_path / "w.lmdb"
    build_cache(many_images, store, workers=1)
    with open_cache(store, snapshot_seconds=None) as reader:
        walk = reader.iter_keys(chunk=10)
        first = [next(walk) for _ in range(10)]
        # One LMDB environment per path per process: the writer runs in another process.
        script = (
            "import sys; from lmdb_cache import CacheWriter\n"
            "with CacheWriter(sys.argv[1]) as w:\n"
            "    w.remove('img_15.png')  # in the next chunk\n"
            "    w.remove('img_02.png')  # already given\n"
        )
        subprocess.run([sys.executable, "-c", script, str(store)], check=True)
        reader.refresh()
        rest = list(walk)
    assert first == [f"img_{i:02d}.png" for i in range(10)]
    assert rest == [f"img_{i:02d}.png" for i in range(10, 48) if i != 15]


def test_check_settings(tiny_images, tmp_path):
    full = tmp_path / "full.lmdb"
    capped = tmp_path / "capped.lmdb"
    build_cache(tiny_images, full, workers=1)
    build_cache(tiny_images, capped, workers=1, max_side=64, resample="lanczos")
    with open_cache(full) as reader:
        reader.check_settings(max_side=640, resample="bicubic")  # any cap, applied after
        reader.check_settings()
    with open_cache(capped) as reader:
        reader.check_settings(max_side=64, resample="lanczos")
        with pytest.raises(SettingsMismatchError, match="capped at --max-side 64"):
            reader.check_settings(max_side=100, resample="lanczos")
        with pytest.raises(SettingsMismatchError, match="--max-side none"):
            reader.check_settings(max_side=None, resample="lanczos")
        with pytest.raises(SettingsMismatchError, match="--resample bilinear"):
            reader.check_settings(max_side=64, resample="bilinear")


def test_info_is_a_copy_and_names_the_source(tiny_cache, tiny_images):
    with open_cache(tiny_cache) as reader:
        info = reader.info
        info["images"] = -1
        assert reader.info["images"] == 6
        assert reader.source_root == str(tiny_images.resolve())
        assert reader.settings["max_side"] is None


def test_raw_access_names_the_databases(tiny_cache):
    with open_cache(tiny_cache) as reader:
        assert sorted(reader.raw_keys("meta")) == sorted(k.encode() for k in TINY_SPEC)
        assert reader.raw_value("manifest", b"manifest") is not None
        with pytest.raises(ValueError, match="choose one of manifest, meta, pixels, failures"):
            list(reader.raw_keys("other"))
