"""DBLoss against hand computations on 2x4 maps: OHEM-balanced BCE, masked Dice, masked L1,
their weighted sum, the zero-positive rule, masks, and bf16 inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ocr.losses import DBLoss
from ocr.models import DBNet

EPS = 1e-6
# One 2x4 image. The only positive pixel is (0, 0); the other seven are negatives.
LOGITS = [[1.0, 2.0, -1.0, 0.5], [-3.0, 0.0, -0.5, 3.0]]
PROB_MAP = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
BINARY = [[0.9, 0.2, 0.1, 0.6], [0.3, 0.8, 0.05, 0.4]]
THRESH = [[0.3, 0.5, 0.7, 0.2], [0.6, 0.4, 0.3, 0.9]]
THRESH_MAP = [[0.3, 0.7, 0.3, 0.3], [0.3, 0.3, 0.7, 0.3]]
THRESH_MASK = [[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]

pytestmark = pytest.mark.usefixtures("one_thread")


def softplus(x: float) -> float:
    """BCE of a negative pixel with logit x is log(1 + e^x); of a positive, softplus(-x)."""
    return math.log1p(math.exp(x))


# 1 positive, so 3 * 1 = 3 hardest negatives: the logits 3.0, 2.0 and 0.5.
EXPECTED_PROB = (softplus(-1.0) + softplus(3.0) + softplus(2.0) + softplus(0.5)) / (4 + EPS)
# Dice with the gt ones at (0, 0) only and all pixels in the mask:
# sum(b g) = 0.9, sum(b) = 0.9 + 0.2 + 0.1 + 0.6 + 0.3 + 0.8 + 0.05 + 0.4 = 3.35, sum(g) = 1.
EXPECTED_BINARY = 1 - 2 * 0.9 / (3.35 + 1 + EPS)
# |t - t*| inside the thresh mask: 0.2 + 0.4 + 0.3 + 0.1 over 4 pixels.
EXPECTED_THRESH = 1.0 / (4 + EPS)


def _map(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[rows]], dtype=torch.float32)  # (1, 1, 2, 4)


def _pred(logits=LOGITS, binary=BINARY, thresh=THRESH) -> dict[str, torch.Tensor]:
    return {"prob_logits": _map(logits), "binary": _map(binary), "thresh": _map(thresh)}


def _batch(prob_map=PROB_MAP, prob_mask=None, thresh_mask=THRESH_MASK) -> dict[str, torch.Tensor]:
    return {
        "prob_map": _map(prob_map)[:, 0],
        "prob_mask": torch.ones(1, 2, 4) if prob_mask is None else _map(prob_mask)[:, 0],
        "thresh_map": _map(THRESH_MAP)[:, 0],
        "thresh_mask": _map(thresh_mask)[:, 0],
    }


def _prob_only(logits=LOGITS) -> dict[str, torch.Tensor]:
    return {"prob_logits": _map(logits)}


def test_prob_loss_is_bce_over_positives_and_the_hardest_negatives():
    _, parts = DBLoss()(_prob_only(), _batch())
    assert parts["prob"].item() == pytest.approx(EXPECTED_PROB, rel=1e-6)


def test_ohem_ignores_negatives_easier_than_the_selected_ones():
    easier = [[1.0, 2.0, 0.2, 0.5], [-2.0, 0.0, -0.5, 3.0]]  # -1 -> 0.2, -3 -> -2: still below 0.5
    _, parts = DBLoss()(_prob_only(easier), _batch())
    assert parts["prob"].item() == pytest.approx(EXPECTED_PROB, rel=1e-6)


def test_ohem_ratio_sets_the_number_of_negatives():
    _, parts = DBLoss(ohem_ratio=1.0)(_prob_only(), _batch())
    assert parts["prob"].item() == pytest.approx((softplus(-1.0) + softplus(3.0)) / (2 + EPS))


def test_ohem_mines_negatives_over_the_whole_batch():
    # Image 0: positive logit 0 and negatives -4, -4, -4; image 1: negatives 1, 2, 3, -4.
    logits = torch.tensor([[[[0.0, -4.0, -4.0, -4.0]]], [[[1.0, 2.0, 3.0, -4.0]]]])
    prob_map = torch.tensor([[[1.0, 0, 0, 0]], [[0.0, 0, 0, 0]]])
    batch = {"prob_map": prob_map, "prob_mask": torch.ones(2, 1, 4)}
    _, parts = DBLoss()({"prob_logits": logits}, batch)
    expected = (softplus(0.0) + softplus(3.0) + softplus(2.0) + softplus(1.0)) / (4 + EPS)
    assert parts["prob"].item() == pytest.approx(expected, rel=1e-6)


def test_prob_mask_excludes_a_pixel_from_mining():
    # Masking the hardest negative (logit 3.0) lets the next one (0.0) in.
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    _, parts = DBLoss()(_prob_only(), _batch(prob_mask=mask))
    expected = (softplus(-1.0) + softplus(2.0) + softplus(0.5) + softplus(0.0)) / (4 + EPS)
    assert parts["prob"].item() == pytest.approx(expected, rel=1e-6)


def test_prob_mask_excludes_a_positive_pixel():
    # (0, 1) is text but masked out: 1 positive remains, so 3 negatives of the six unmasked.
    prob_map = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    mask = [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    _, parts = DBLoss()(_prob_only(), _batch(prob_map=prob_map, prob_mask=mask))
    expected = (softplus(-1.0) + softplus(3.0) + softplus(0.5) + softplus(0.0)) / (4 + EPS)
    assert parts["prob"].item() == pytest.approx(expected, rel=1e-6)


def test_binary_loss_is_masked_dice():
    _, parts = DBLoss()(_pred(), _batch())
    assert parts["binary"].item() == pytest.approx(EXPECTED_BINARY, rel=1e-6)


def test_binary_loss_leaves_masked_pixels_out_of_every_sum():
    # gt ones at (0, 0), (0, 1), (1, 1); (0, 1) and (1, 3) are masked out.
    # sum(b g m) = 0.9 + 0.8, sum(b m) = 3.35 - 0.2 - 0.4 = 2.75, sum(g m) = 2.
    prob_map = [[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    mask = [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    _, parts = DBLoss()(_pred(), _batch(prob_map=prob_map, prob_mask=mask))
    assert parts["binary"].item() == pytest.approx(1 - 2 * 1.7 / (2.75 + 2 + EPS), rel=1e-6)


def test_thresh_loss_is_masked_l1():
    _, parts = DBLoss()(_pred(), _batch())
    assert parts["thresh"].item() == pytest.approx(EXPECTED_THRESH, rel=1e-6)


def test_total_is_the_weighted_sum_of_the_parts():
    total, _ = DBLoss(prob_weight=2.0, binary_weight=3.0, thresh_weight=5.0)(_pred(), _batch())
    expected = 2 * EXPECTED_PROB + 3 * EXPECTED_BINARY + 5 * EXPECTED_THRESH
    assert total.item() == pytest.approx(expected, rel=1e-6)


def test_eval_predictions_give_the_prob_loss_only():
    total, parts = DBLoss(prob_weight=2.0)(
        _prob_only(), {k: v for k, v in _batch().items() if k.startswith("prob")}
    )
    assert set(parts) == {"prob"}
    assert total.item() == pytest.approx(2 * EXPECTED_PROB, rel=1e-6)


@pytest.mark.parametrize(
    ("key", "row", "col"),
    [("prob_logits", 1, 3), ("binary", 1, 3), ("thresh", 0, 0)],
    ids=["prob-masked-pixel", "binary-masked-pixel", "thresh-masked-pixel"],
)
def test_predictions_at_masked_pixels_do_not_change_the_loss(key, row, col):
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    loss_fn = DBLoss()
    before, _ = loss_fn(_pred(), _batch(prob_mask=mask))
    changed = _pred()
    changed[key][0, 0, row, col] = 0.123 if key != "prob_logits" else 9.0
    after, _ = loss_fn(changed, _batch(prob_mask=mask))
    assert after.item() == before.item()


def test_a_batch_without_positives_keeps_its_hardest_negatives():
    _, parts = DBLoss(empty_negatives=2)(_prob_only(), _batch(prob_map=[[0.0] * 4] * 2))
    assert parts["prob"].item() == pytest.approx((softplus(3.0) + softplus(2.0)) / (2 + EPS))


def test_a_small_batch_without_positives_keeps_all_negatives_by_default():
    _, parts = DBLoss()(_prob_only(), _batch(prob_map=[[0.0] * 4] * 2))
    expected = sum(softplus(x) for row in LOGITS for x in row) / (8 + EPS)
    assert parts["prob"].item() == pytest.approx(expected, rel=1e-6)


def test_empty_negatives_zero_gives_the_reference_zero_loss_without_positives():
    _, parts = DBLoss(empty_negatives=0)(_prob_only(), _batch(prob_map=[[0.0] * 4] * 2))
    assert parts["prob"].item() == 0.0


def test_parts_are_detached_and_the_total_has_gradient():
    pred = {k: v.requires_grad_() for k, v in _pred().items()}
    total, parts = DBLoss()(pred, _batch())
    total.backward()
    assert not any(p.requires_grad for p in parts.values())
    assert pred["prob_logits"].grad.abs().sum() > 0


def test_bf16_predictions_are_scored_in_float32():
    # The logits are exact in bf16; bf16 arithmetic would be off by ~1e-2 relative.
    total, _ = DBLoss()({"prob_logits": _map(LOGITS).bfloat16()}, _batch())
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(EXPECTED_PROB, rel=1e-6)


def test_bf16_autocast_forward_and_loss_are_finite():
    torch.manual_seed(0)
    model = DBNet(width=8, inner_channels=32)
    images = torch.randn(2, 3, 64, 64)
    maps = torch.zeros(2, 64, 64)
    maps[:, 16:48, 16:48] = 1.0
    batch = {
        "prob_map": maps,
        "prob_mask": torch.ones_like(maps),
        "thresh_map": torch.full_like(maps, 0.3),
        "thresh_mask": maps.clone(),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = DBLoss()(model(images), batch)
    total.backward()
    assert total.dtype == torch.float32
    assert math.isfinite(total.item())
    assert all(math.isfinite(p.item()) for p in parts.values())


def test_mismatched_target_shape_raises():
    batch = dict(_batch(), prob_map=torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"batch\['prob_map'\] must have shape \(1, 2, 4\)"):
        DBLoss()(_prob_only(), batch)


def test_missing_threshold_target_raises():
    batch = {k: v for k, v in _batch().items() if k != "thresh_map"}
    with pytest.raises(ValueError, match=r"DBLoss needs batch\['thresh_map'\]"):
        DBLoss()(_pred(), batch)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"thresh_weight": -1.0}, ValueError, "thresh_weight must be a non-negative"),
        ({"ohem_ratio": 0.0}, ValueError, "ohem_ratio must be a positive"),
        ({"prob_weight": "1"}, TypeError, "prob_weight must be a number, got str"),
        ({"empty_negatives": -1}, ValueError, "empty_negatives must be at least 0"),
    ],
    ids=["negative-weight", "zero-ohem-ratio", "string-weight", "negative-empty-negatives"],
)
def test_bad_parameters_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        DBLoss(**kwargs)
