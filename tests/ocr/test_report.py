"""The evaluation report (``ocr-eval --report DIR``): per-image scores, worst-first order,
escaping, offline links, thumbnails, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ocr.cli import eval_command
from ocr.data.dataset import LoadedImage
from ocr.engine import EvalResult, ImageTruth, PhaseStats
from ocr.metrics import ImageCounts, image_scores
from ocr.postprocess import Detection
from ocr.report import ReportInfo, ranked_images, render_page, write_report

INFO = ReportInfo(
    checkpoint="runs/x/best.pt",
    split="val_dataset",
    source="cache",
    image_path="data/val",
    annotation_path="data/val.json",
    image_cache="data/val.lmdb",
    config_digest="sha256:0123456789abcdef",
    iou_threshold=0.5,
)
METRICS = {
    "precision": 0.5,
    "recall": 0.25,
    "hmean": 1 / 3,
    "matched": 1,
    "num_pred": 2,
    "num_gt": 4,
}


class _Rows(HTMLParser):
    """The text of each ``td.key`` cell of ``table#images``, in page order, and every
    ``href``/``src`` of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.links: list[str] = []
        self._table = ""
        self._in_key = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
        self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]
        if tag == "td" and self._table == "images" and a.get("class") == "key":
            self._in_key = True
            self.keys.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_key = False

    def handle_data(self, data):
        if self._in_key:
            self.keys[-1] += data


def _parse(page: str) -> _Rows:
    rows = _Rows()
    rows.feed(page)
    rows.close()
    return rows


# (matched, detected, true) -> (precision, recall, H-mean), by the ICDAR 2015 script's rules.
@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((2, 4, 2), (0.5, 1.0, 2 / 3)),
        ((1, 3, 2), (1 / 3, 0.5, 0.4)),
        ((3, 3, 3), (1.0, 1.0, 1.0)),
        ((0, 0, 5), (0.0, 0.0, 0.0)),
        ((0, 3, 0), (0.0, 1.0, 0.0)),
        ((0, 0, 0), (1.0, 1.0, 1.0)),
    ],
    ids=["over-detected", "partial", "perfect", "nothing-found", "only-false", "empty-image"],
)
def test_image_scores_follow_the_icdar_per_image_rules(counts, expected):
    s = image_scores(ImageCounts(*counts))
    assert (s.precision, s.recall, s.hmean) == pytest.approx(expected)


def test_images_are_ranked_by_hmean_then_mistakes_then_key():
    per_image = {
        "good.jpg": ImageCounts(2, 2, 2),  # H 1, no mistakes
        "empty.jpg": ImageCounts(0, 0, 0),  # H 1, no mistakes
        "half.jpg": ImageCounts(1, 2, 2),  # H 0.5, 2 mistakes
        "b.jpg": ImageCounts(1, 2, 2),  # H 0.5, 2 mistakes
        "a.jpg": ImageCounts(1, 2, 2),  # H 0.5, 2 mistakes
        "zero_few.jpg": ImageCounts(0, 1, 0),  # H 0, 1 mistake
        "zero_many.jpg": ImageCounts(0, 5, 3),  # H 0, 8 mistakes
    }
    assert [row.key for row in ranked_images(per_image)] == [
        "zero_many.jpg",
        "zero_few.jpg",
        "a.jpg",
        "b.jpg",
        "half.jpg",
        "empty.jpg",
        "good.jpg",
    ]


CRAFTED = "<b>&\"x' y ü#?.jpg"


def test_page_escapes_keys_in_text_and_quotes_them_in_links():
    page = render_page(METRICS, ranked_images({CRAFTED: ImageCounts(0, 1, 1)}), INFO)
    assert "<b>" not in page
    assert "&lt;b&gt;&amp;&quot;x&#x27; y ü#?.jpg" in page
    parsed = _parse(page)
    assert parsed.keys == [CRAFTED]
    assert "drawings/%3Cb%3E%26%22x%27%20y%20%C3%BC%23%3F.jpg.png" in parsed.links
    assert "thumbs/%3Cb%3E%26%22x%27%20y%20%C3%BC%23%3F.jpg.jpg" in parsed.links


def test_summary_gives_the_metrics_and_where_they_come_from():
    page = render_page(METRICS, ranked_images({"a.jpg": ImageCounts(1, 2, 4)}), INFO)
    summary = page[page.index('<div id="summary">') : page.index("</div>")]
    for expected in (
        "<th>H-mean</th><td>0.3333</td>",
        "<th>Precision</th><td>0.5000</td>",
        "<th>Recall</th><td>0.2500</td>",
        "<th>True words</th><td>4</td>",
        "<th>Detections</th><td>2</td>",
        "<th>Matched</th><td>1</td>",
        "<th>Images</th><td>1</td>",
        "<th>Checkpoint</th><td>runs/x/best.pt</td>",
        "<th>Image source</th><td>cache</td>",
        "<th>Image folder</th><td>data/val</td>",
        "<th>Annotations</th><td>data/val.json</td>",
        "<th>Image cache</th><td>data/val.lmdb</td>",
        "<th>Config digest</th><td>sha256:0123456789abcdef</td>",
    ):
        assert expected in summary


class _Source:
    def __init__(self, sizes):
        self.sizes = sizes

    def load(self, key):
        height, width = self.sizes[key]
        return LoadedImage(np.full((height, width, 3), 200, np.uint8), width, height, 1)


class _Dataset:
    def __init__(self, sizes):
        self.source = _Source(sizes)


def _box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


@pytest.fixture
def small_report(tmp_path):
    """A report written from a hand-made evaluation of three images, one with a crafted key."""
    sizes = {"wide.jpg": (400, 600), "sub/tall.png": (700, 300), CRAFTED: (80, 100)}
    per_image = {
        "wide.jpg": ImageCounts(1, 1, 1),
        "sub/tall.png": ImageCounts(0, 1, 2),
        CRAFTED: ImageCounts(1, 2, 1),
    }
    predictions = {key: [Detection(_box(10, 10, 50, 30), 0.9)] for key in sizes}
    truths = {
        key: ImageTruth(1, (w, h), [_box(10, 10, 50, 30)], [False]) for key, (h, w) in sizes.items()
    }
    result = EvalResult(METRICS, PhaseStats(images=3), predictions, truths, per_image)
    index = write_report(tmp_path / "report", result, _Dataset(sizes), INFO)
    return index, sizes


def test_report_links_only_files_inside_its_folder(small_report):
    index, _ = small_report
    page = index.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    links = _parse(page).links
    assert len(links) == 9  # per image: the thumbnail, and two links to the drawing
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        assert (index.parent / unquote(link)).is_file(), link


def test_report_lists_the_worst_image_first(small_report):
    index, _ = small_report
    assert _parse(index.read_text(encoding="utf-8")).keys == ["sub/tall.png", CRAFTED, "wide.jpg"]


def test_thumbnails_are_jpegs_at_most_256_pixels_on_their_longest_side(small_report):
    index, sizes = small_report
    thumbs = sorted((index.parent / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == len(sizes)
    for path in thumbs:
        with Image.open(path) as thumb:
            assert thumb.format == "JPEG"
            assert max(thumb.size) <= 256
    with Image.open(index.parent / "thumbs" / "wide.jpg.jpg") as thumb:
        assert thumb.size == (256, 171)  # 600 x 400 scaled by 256 / 600


def test_report_refuses_an_evaluation_without_predictions(tmp_path):
    result = EvalResult(METRICS, PhaseStats(), per_image={"a.jpg": ImageCounts(0, 0, 1)})
    with pytest.raises(ValueError, match="keep_predictions=True"):
        write_report(tmp_path, result, _Dataset({}), INFO)


@pytest.fixture(scope="module")
def cli_report(trained, tmp_path_factory):
    """``ocr-eval --report`` on annotations where one image is clearly worst: the model's own
    detections stand as ground truth (every image scores 1), but for one image whose words are
    replaced by tiny boxes that no detection matches (it scores 0)."""
    cfg, _, out = trained
    tmp = tmp_path_factory.mktemp("report")
    pred = tmp / "pred.json"
    ckpt = str(out / "last.pt")
    result = CliRunner().invoke(eval_command, ["-k", ckpt, "--quiet", "--predictions", str(pred)])
    assert result.exit_code == 0, result.output
    doc = json.loads(pred.read_text())
    worst = sorted(doc["images"])[2]
    tiny = {
        f"{i:04d}": {"points": [[i, 0], [i + 1, 0], [i + 1, 1], [i, 1]]} for i in range(0, 40, 4)
    }
    doc["images"][worst]["words"] = tiny
    spoiled = tmp / "spoiled.json"
    spoiled.write_text(json.dumps(doc))
    report = tmp / "report"
    args = ["-k", ckpt, "--quiet", "--report", str(report)]
    result = CliRunner().invoke(
        eval_command, [*args, f"datasets.val_dataset.annotation_path={spoiled}"]
    )
    assert result.exit_code == 0, result.output
    return report, sorted(doc["images"]), worst


def test_ocr_eval_report_lists_every_image_once_worst_first(cli_report):
    report, keys, worst = cli_report
    rows = _parse((report / "index.html").read_text(encoding="utf-8")).keys
    assert sorted(rows) == keys
    assert rows[0] == worst


def test_ocr_eval_report_prints_where_the_page_is(trained, tmp_path):
    _, _, out = trained
    report = tmp_path / "r"
    result = CliRunner().invoke(
        eval_command, ["-k", str(out / "last.pt"), "--json", "--report", str(report)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["report"] == str(report / "index.html")


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_chromium_renders_every_image_once_worst_first(cli_report, tmp_path):
    report, keys, worst = cli_report
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        (report / "index.html").resolve().as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    rows = _parse(dom).keys
    assert sorted(rows) == keys
    assert rows[0] == worst
