"""``ocr-eval``: evaluate a checkpoint on one split of a config, under torchrun too."""

from __future__ import annotations

from typing import Any

from .agreement import check_ranks_agree, data_identity
from .builders import (
    build_eval_loader,
    build_normalizer,
    build_postprocess,
    dataset_cfg,
    section,
    setup_run,
)
from .checkpoint import load_checkpoint, load_model_state
from .config import check_config, config_digest
from .distributed import destroy_process_group
from .engine import EvalResult, evaluate
from .models import build_model
from .predictions import draw_predictions
from .report import ReportInfo, write_report


def evaluate_checkpoint(
    config: dict[str, Any],
    checkpoint: str,
    split: str = "val_dataset",
    progress: bool = True,
    keep_predictions: bool = False,
    state: dict[str, Any] | None = None,
    draw_dir: str | None = None,
    report_dir: str | None = None,
) -> EvalResult:
    """Evaluate a checkpoint on ``datasets.<split>`` of ``config`` (any image source).

    ``state`` is the checkpoint already read by ``load_checkpoint``, if the caller has it.
    ``draw_dir``: also write one PNG per image there, ground truth and detections drawn
    (``ocr.predictions.draw_predictions``; rank 0 only). ``report_dir``: also write the
    evaluation report there (``ocr.report``: ``index.html``, drawings and thumbnails; rank 0
    only). Under ``torchrun`` the ranks first compare what they read (``ocr.agreement``) and
    all stop if one differs.
    """
    config = check_config(config)
    info, device, trainer = setup_run(config)
    try:
        try:
            state = state if state is not None else load_checkpoint(checkpoint)
            model_cfg = dict(section(config, "model"), weights=None)  # the checkpoint has them
            model = build_model(model_cfg).to(device)
            load_model_state(model, state, checkpoint)
            dataset, loader = build_eval_loader(config, split, info)
            identities = {}
            if info.enabled:  # every rank proves it reads what the others read
                identities = {split: data_identity(dataset, dataset_cfg(config, split))}
        except Exception as e:
            check_ranks_agree({}, info, failure=e)  # the peers stop too, instead of waiting
            raise
        check_ranks_agree(identities, info)
        result = evaluate(
            model,
            loader,
            normalizer=build_normalizer(config, device),
            post=build_postprocess(config),
            device=device,
            info=info,
            iou_threshold=float(config["metric"]["iou_threshold"]),
            amp=trainer["amp"],
            progress=progress and info.is_main,
            keep_predictions=keep_predictions or draw_dir is not None or report_dir is not None,
        )
        if draw_dir is not None and info.is_main:
            assert result.predictions is not None and result.truths is not None
            draw_predictions(draw_dir, dataset, result.predictions, result.truths)
        if report_dir is not None and info.is_main:
            report = _report_info(config, checkpoint, split, dataset.source.name)
            write_report(report_dir, result, dataset, report)
    except BaseException:
        destroy_process_group()
        raise
    destroy_process_group(wait_for_peers=True)
    return result


def _report_info(config: dict[str, Any], checkpoint: str, split: str, source: str) -> ReportInfo:
    """What the report says about an evaluation of ``datasets.<split>`` of ``config`` whose
    images came from ``source`` (the dataset's ``source.name``)."""
    data = dataset_cfg(config, split)
    cache = data.get("image_cache") if source == "cache" else None
    return ReportInfo(
        checkpoint=checkpoint,
        split=split,
        source=source,
        image_path=str(data["image_path"]),
        annotation_path=str(data["annotation_path"]),
        image_cache=str(cache) if cache else None,
        config_digest=config_digest(config),
        iou_threshold=float(config["metric"]["iou_threshold"]),
    )
