"""Command line: ``ocr-train``, ``ocr-eval``, ``ocr-convert`` and ``ocr-predict``.

The only module of ``ocr`` that prints or exits. Exit status: 0 success, 1 failure (bad data,
a damaged checkpoint or cache, a loss that diverged), 2 usage error (bad option, config or
override; a checkpoint path that names no file, or a file that is not a checkpoint).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from click.core import ParameterSource

from lmdb_cache import CacheError
from lmdb_cache.annotations import DONT_CARE

from .agreement import DataMismatchError, PeerFailedError
from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    NotACheckpointError,
    load_checkpoint,
)
from .config import ConfigError, Override, load_config, parse_override, resolve_config
from .data.annotations import AnnotationError
from .data.formats import ImageCheck, check_images, convert, formats, write_document
from .distributed import dist_info_from_env
from .pipeline import evaluate_checkpoint, metrics_text, train
from .predict import check_inputs, predict_images
from .predictions import predictions_to_annotations
from .report import INDEX as REPORT_INDEX

_CTX = {"help_option_names": ["-h", "--help"]}
DEFAULT_CONFIG = "configs/dbnet.yaml"
_SPLITS = {"train": "train_dataset", "val": "val_dataset", "test": "test_dataset"}

# Options that ocr-eval and ocr-predict share (each use makes its own click.Option).
_CHECKPOINT = click.option(
    "--checkpoint",
    "-k",
    required=True,
    type=click.Path(dir_okay=False),
    help="A checkpoint from ocr-train (runs/<name>/best.pt or last.pt).",
)
_QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _run(action: Any) -> Any:
    """Turn the library's errors into a message and an exit status."""
    try:
        return action()
    except (ConfigError, CheckpointNotFoundError, NotACheckpointError, DataMismatchError) as e:
        _fail(str(e), 2)
    except (CheckpointError, CacheError, AnnotationError, FloatingPointError, PeerFailedError) as e:
        _fail(str(e), 1)
    except (OSError, ValueError, TypeError) as e:  # OSError: a file that cannot be written
        _fail(str(e), 1)
    return None


def _items(overrides: tuple[str, ...], **shortcuts: Any) -> list[Override]:
    """The KEY=VALUE arguments, then the options that stand for keys (taken as given)."""
    items: list[Override] = list(overrides)
    return items + [(key, value) for key, value in shortcuts.items() if value is not None]


def _saved_config(
    checkpoint: str, state: dict[str, Any], overrides: list[Override], hint: str = ""
) -> dict[str, Any]:
    """The config saved in a checkpoint, with ``overrides`` on top, checked."""
    config = state.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"checkpoint '{checkpoint}' holds no config{hint}")
    return resolve_config(config, overrides, source=f"the config in '{checkpoint}'")


def _resume_target(resume: str | None, items: list[Override]) -> tuple[str | None, list[Override]]:
    """``--resume``, or a ``trainer.resume=CKPT`` override standing for it (taken out)."""
    if resume is not None:
        return resume, items
    for item in items:
        key, value = parse_override(item)
        if key == "trainer.resume" and isinstance(value, str) and value:
            return value, [i for i in items if i is not item]
    return None, items


@click.command("ocr-train", context_settings=_CTX)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option(
    "-c",
    "--config",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="YAML config; its _base_ chain is merged first. Not with --resume (which uses the "
    "config saved in the checkpoint).",
)
@click.option("-o", "--output", default=None, help="Run folder (trainer.output_dir).")
@click.option(
    "--resume",
    default=None,
    metavar="CKPT",
    help="Continue the run of a checkpoint (runs/<name>/last.pt) with the config saved in it: "
    "same data sources, epochs, output folder, optimizer, LR schedule and random states. "
    "KEY=VALUE overrides, -o and --epochs apply on top and are logged; -c is refused.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="trainer.epochs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def train_command(
    overrides: tuple[str, ...],
    config: str,
    output: str | None,
    resume: str | None,
    epochs: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train DBNet on datasets.train_dataset, validating on datasets.val_dataset.

    Any config key can be overridden as KEY=VALUE (VALUE is YAML). Switching the images
    to the cache built by build-cache is one override:

    \b
      ocr-train datasets.train_dataset.image_cache=data/train.lmdb \\
                datasets.val_dataset.image_cache=data/val.lmdb

    Each epoch prints one line: loss, images/s, and the time split into data wait (blocked on
    the DataLoader) and compute, then validation precision, recall and H-mean. The run folder
    gets config.yaml (resolved), log.jsonl, last.pt, best.pt and summary.json. Under
    'torchrun --nproc_per_node N' the run is data parallel (DDP); every rank reads the same
    .lmdb.

    An interrupted run goes on from its checkpoint alone, ending with the weights and metrics
    an uninterrupted run would have; overrides change the saved config, one logged line each.
    last.pt is written every epoch, and every N steps with trainer.checkpoint_every_steps=N
    (a kill mid-epoch then loses at most N steps); trainer.log_every_steps=N logs each N-th
    step's loss and digests of its samples and data to log.jsonl:

    \b
      ocr-train trainer.checkpoint_every_steps=200 trainer.log_every_steps=50
      ocr-train --resume runs/dbnet/last.pt
      ocr-train --resume runs/dbnet/last.pt --epochs 20

    Every config key is checked once the overrides are applied: a wrong type, a value out of
    range or an unknown key (with the closest known one) exits with status 2.
    """
    ctx = click.get_current_context()
    config_given = ctx.get_parameter_source("config") is not ParameterSource.DEFAULT

    def action() -> dict[str, Any]:
        shortcuts = {"trainer.output_dir": output, "trainer.epochs": epochs}
        ckpt, items = _resume_target(resume, _items(overrides, **shortcuts))
        state = None
        if ckpt is None:
            cfg = load_config(config, items)
        elif config_given:
            raise ConfigError(
                f"--resume continues the run with the config saved in '{ckpt}'; drop "
                f"-c/--config {config} and give changes as KEY=VALUE overrides (each is logged)"
            )
        else:
            state = load_checkpoint(ckpt)  # read once: config, weights and progress
            cfg = _saved_config(ckpt, state, [*items, ("trainer.resume", ckpt)])
        echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
        return train(cfg, progress=not (quiet or as_json), echo=echo, state=state)

    summary = _run(action)
    if not dist_info_from_env().is_main:
        return  # under torchrun, rank 0 reports for all
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(
            f"done in {summary['total_s']:.1f} s: data wait {100 * summary['data_wait_share']:.0f}%"
            f" of the loop, {summary['train_images_per_s']:.1f} train img/s"
            + (f"; {metrics_text(summary['metrics'])}" if summary["metrics"] else "")
            + f"; checkpoints in {summary['output_dir']}"
        )


@click.command("ocr-eval", context_settings=_CTX)
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@_CHECKPOINT
@click.option(
    "-c",
    "--config",
    default=None,
    type=click.Path(dir_okay=False),
    help="YAML config. Default: the config saved in the checkpoint.",
)
@click.option(
    "--split",
    type=click.Choice(sorted(_SPLITS)),
    default="val",
    show_default=True,
    help="Which datasets.<split>_dataset to evaluate.",
)
@click.option(
    "--predictions",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the detections to this JSON file, in the annotation format (raw file "
    "frame, each word with its score): it loads back as an annotation file.",
)
@click.option(
    "--draw",
    "draw_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write one PNG per image into this folder: the image as the dataset serves it, "
    "ground truth in green (don't-care dashed), detections in red.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Also write DIR/index.html, a page to open in any browser (offline; no server): the "
    "summary, then one row per image with its own P, R, H-mean and counts, worst image "
    "first, each with a thumbnail linking to its drawing (DIR/drawings, DIR/thumbs). Copy "
    "or zip DIR as a whole.",
)
@_QUIET
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def eval_command(
    overrides: tuple[str, ...],
    checkpoint: str,
    config: str | None,
    split: str,
    predictions: str | None,
    draw_dir: str | None,
    report_dir: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Precision, recall and H-mean of a checkpoint (ICDAR 2015 rules, IoU >= 0.5).

    The same checkpoint gives the same numbers, to the last digit, whether the images come
    from disk, a RAM preload or the cache:

    \b
      ocr-eval -k runs/dbnet/best.pt
      ocr-eval -k runs/dbnet/best.pt datasets.val_dataset.image_cache=data/val.lmdb
      ocr-eval -k runs/dbnet/best.pt --draw runs/dbnet/drawn --predictions pred.json
      ocr-eval -k runs/dbnet/best.pt --report runs/dbnet/report

    Polygons are compared in the upright frame (the upright, full-size image). --report
    writes a static page (open runs/dbnet/report/index.html) that lists the images worst
    first, to see where the model fails.
    """

    def action() -> Any:
        cfg = None if config is None else load_config(config, overrides)  # usage errors first
        state = load_checkpoint(checkpoint)  # read once: config and weights
        if cfg is None:
            cfg = _saved_config(checkpoint, state, list(overrides), "; pass --config")
        result = evaluate_checkpoint(
            cfg,
            checkpoint,
            _SPLITS[split],
            not (quiet or as_json),
            predictions is not None,
            state=state,
            draw_dir=draw_dir,
            report_dir=report_dir,
        )
        if predictions is not None and result.predictions is not None:  # rank 0's
            assert result.truths is not None
            doc = predictions_to_annotations(result.predictions, result.truths)
            if dist_info_from_env().is_main:
                write_document(doc, predictions)
        return result

    result = _run(action)
    if not dist_info_from_env().is_main:
        return
    stats = result.stats
    page = None if report_dir is None else os.path.join(report_dir, REPORT_INDEX)
    if as_json:
        doc = {"split": split, "checkpoint": checkpoint, **result.metrics}
        doc["timing"] = stats.to_dict()
        if page is not None:
            doc["report"] = page
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"{split}: {stats.images} images, {metrics_text(result.metrics)}\n"
        f"{stats.wall_s:.2f} s, {stats.images_per_s:.1f} img/s, data wait "
        f"{stats.data_wait_s:.2f} s ({100 * stats.data_wait_share:.0f}%)"
        + ("" if page is None else f"\nreport: {page}")
    )


def _convert_epilog() -> str:
    lines = ["\b", "Formats:"]
    for fmt in formats().values():
        lines += [f"  {fmt.name}: {fmt.summary}", f"    {fmt.example}"]
    return "\n".join(lines)


@click.command("ocr-convert", context_settings=_CTX, epilog=_convert_epilog())
@click.argument("fmt", metavar="FORMAT", type=click.Choice(list(formats())))
@click.argument("src", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Annotation JSON to write (atomically: beside it, then renamed).",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Image folder: real file names and keys relative to it; reports images listed but "
    "missing, and images no annotation lists.",
)
def convert_command(fmt: str, src: str, output: str, images: str | None) -> None:
    """Convert annotations in FORMAT (a file or folder SRC) into this project's JSON.

    Points are copied in the raw file frame; a don't-care word gets the text '###'; word ids
    are 0000, 0001, ... per image in source order. Exit status: 0 written, 1 bad input (the
    message names the file and line or entry), 2 usage error.
    """

    def action() -> dict[str, Any]:
        doc = convert(fmt, src, images=images)
        if images is not None:
            _report_images(check_images(doc, images), images)
        write_document(doc, output)
        return doc

    doc = _run(action)
    entries = doc["images"].values()
    words = sum(len(e["words"]) for e in entries)
    ignored = sum(1 for e in entries for w in e["words"].values() if w.get("text") == DONT_CARE)
    click.echo(
        f"wrote {len(doc['images'])} images, {words} words ({ignored} don't care) to {output}"
    )


def _report_images(check: ImageCheck, images: str) -> None:
    for key in check.missing:
        click.echo(f"warning: '{key}' is annotated but not in '{images}'", err=True)
    for key in check.unlisted:
        click.echo(f"warning: '{key}' in '{images}' has no annotation", err=True)
    if check.missing or check.unlisted:
        click.echo(
            f"warning: {len(check.missing)} annotated images missing from '{images}', "
            f"{len(check.unlisted)} images there without annotation",
            err=True,
        )


@click.command("ocr-predict", context_settings=_CTX)
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@_CHECKPOINT
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Predictions JSON to write: the annotation format (raw file frame, each word with "
    "its score), written atomically.",
)
@click.option(
    "--draw",
    "draw_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also write one PNG per image into this folder (<key>.png): the upright image with "
    "the detections in red.",
)
@click.option(
    "--cache",
    type=click.Path(),
    default=None,
    help="Read the pixels from this store (build-cache) instead of decoding: every image in "
    "it, or those of the one folder given as INPUT (the folder it was built from).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change a key of the checkpoint's config, e.g. --set postprocess.box_thresh=0.5 "
    "(repeatable).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="dataloader.batch_size."
)
@click.option("--device", default=None, help="trainer.device: auto (CUDA when present), cpu, cuda.")
@_QUIET
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON on stdout.")
def predict_command(
    inputs: tuple[str, ...],
    checkpoint: str,
    output: str,
    draw_dir: str | None,
    cache: str | None,
    overrides: tuple[str, ...],
    batch_size: int | None,
    device: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Detect text in images that have no labels; write the detections as annotations.

    INPUT is an image file, a folder (searched recursively) or a list file (.txt, .lst:
    one path a line, relative to the list's folder). The images go through what ocr-eval
    does with the checkpoint's config (datasets.val_dataset's max_side and transform,
    dataloader.batch_size, trainer.device: the GPU when there is one):

    \b
      ocr-predict -k runs/dbnet/best.pt data/new -o predictions.json --draw drawn
      ocr-predict -k runs/dbnet/best.pt scan1.jpg scan2.png -o predictions.json
      ocr-predict -k runs/dbnet/best.pt --cache data/new.lmdb -o predictions.json

    A folder's images are keyed by their path in it, as build-cache keys them, so the
    predictions load with load_annotations (ocr.data.annotations) for that folder, and
    --cache with the store of the folder gives the same file. Points are in the raw file
    frame (before EXIF orientation); each word has its score.

    An input that cannot be used (no such path, an empty folder, a file that is not an
    image, a key the cache lacks) is named on stderr and skipped; the others are predicted
    and written, and the exit status is 1. A missing or foreign checkpoint exits 2 or 1 as
    in ocr-eval.
    """

    try:
        check_inputs(inputs, cache)
    except ValueError as e:
        raise click.UsageError(str(e)) from e

    def action() -> Any:
        shortcuts = {"dataloader.batch_size": batch_size, "trainer.device": device}
        items = _items(overrides, **shortcuts)
        state = load_checkpoint(checkpoint)
        cfg = _saved_config(checkpoint, state, items)
        found = predict_images(
            cfg,
            state,
            checkpoint,
            inputs,
            cache=cache,
            draw_dir=draw_dir,
            progress=not (quiet or as_json),
        )
        write_document(found.document, output)
        return found

    result = _run(action)
    for problem in result.problems:
        click.echo(f"error: {problem}; skipped", err=True)
    words = sum(len(e["words"]) for e in result.document["images"].values())
    if as_json:
        doc = {
            "images": result.images,
            "words": words,
            "skipped": len(result.problems),
            "problems": result.problems,
            "output": output,
            "wall_s": round(result.wall_s, 3),
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        rate = result.images / result.wall_s if result.wall_s > 0 else 0.0
        drawn = f"; drawings in {draw_dir}" if draw_dir is not None else ""
        click.echo(
            f"wrote {words} detections in {result.images} images to {output} "
            f"({result.wall_s:.1f} s, {rate:.1f} img/s){drawn}"
        )
    if result.problems:
        click.echo(f"{len(result.problems)} input(s) skipped (listed above)", err=True)
        sys.exit(1)


def train_main() -> None:
    train_command(prog_name="ocr-train")


def eval_main() -> None:
    eval_command(prog_name="ocr-eval")


def convert_main() -> None:
    convert_command(prog_name="ocr-convert")


def predict_main() -> None:
    predict_command(prog_name="ocr-predict")


@click.group(context_settings=_CTX)
def cli() -> None:
    """DBNet text detection on images from disk, a RAM preload or an LMDB cache.

    Also runnable as 'python -m ocr.cli train|eval|convert|predict' (train and eval under
    torchrun).
    """


cli.add_command(train_command, "train")
cli.add_command(eval_command, "eval")
cli.add_command(convert_command, "convert")
cli.add_command(predict_command, "predict")


if __name__ == "__main__":
    cli(prog_name="python -m ocr.cli")
