"""tools/bench_peers.py: every variant in a fresh process, pixels checked against Pillow's;
peers that are not installed are skipped with the reason."""

from __future__ import annotations

import json

import numpy as np

from tools.bench_peers import _orient, main
from tools.make_samples import generate


def test_store_variants_report_sizes_reads_and_identical_pixels(tmp_path, capsys):
    generate(tmp_path / "img", count=4, seed=9)
    out, plot = tmp_path / "peers.json", tmp_path / "peers.svg"
    argv = [str(tmp_path / "img"), "--max-side", "128", "--scratch", str(tmp_path / "s")]
    argv += ["--variants", "pillow", "jpeg-lmdb", "cache-raw", "cache-zstd"]
    argv += ["--json", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"pillow", "jpeg-lmdb", "cache-raw", "cache-zstd"}
    for row in rows.values():
        assert row["identical"] == row["images"] > 0
        assert row["read_ms"] > 0 and row["epoch_s"] > 0 and row["first_image_s"] > 0
    assert rows["cache-zstd"]["store_bytes"] < rows["cache-raw"]["store_bytes"]
    assert plot.read_text().count("<circle") == 4
    assert "| cache-zstd |" in capsys.readouterr().out


def test_a_missing_peer_is_skipped_with_its_reason(tmp_path, monkeypatch, capsys):
    import tools.bench_peers as bench

    generate(tmp_path / "img", count=2, seed=9)
    monkeypatch.setitem(bench._NEEDS, "simplejpeg", "no_such_module_for_this_test")
    argv = [str(tmp_path / "img"), "--variants", "simplejpeg", "--scratch", str(tmp_path / "s")]
    assert main(argv) == 0
    assert "skipped: no_such_module_for_this_test is not installed" in capsys.readouterr().out


def test_array_orientation_matches_pillows_exif_transpose():
    from PIL import Image, ImageOps

    pixels = (np.arange(4 * 6 * 3) % 251).astype(np.uint8).reshape(4, 6, 3)
    for orientation in range(1, 9):
        image = Image.fromarray(pixels)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(image))
        np.testing.assert_array_equal(
            _orient(pixels, orientation), expected, err_msg=str(orientation)
        )
