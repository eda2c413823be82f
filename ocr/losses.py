"""DBNet's loss: balanced BCE on the probability map, Dice on the binary map, L1 on the
threshold map (Liao et al., AAAI 2020, eq. 4-6; definitions as in MhLiao/DB).

* ``prob``: binary cross-entropy on ``prob_logits`` with online hard negative mining. Over
  the whole batch, positives are ``prob_map * prob_mask`` and negatives
  ``(1 - prob_map) * prob_mask``; all positives are kept with the ``num_neg`` negatives of
  highest loss, ``num_neg = min(#negatives, int(#positives * ohem_ratio))``, and the kept
  losses are summed and divided by ``#positives + num_neg + eps``.
* ``binary``: ``1 - 2 sum(b g m) / (sum(b m) + sum(g m) + eps)`` with the approximate binary
  map ``b``, ``g = prob_map`` and ``m = prob_mask``.
* ``thresh``: ``sum(|t - thresh_map| thresh_mask) / (sum(thresh_mask) + eps)``.

Batches without text: the reference keeps ``#positives * ohem_ratio = 0`` negatives, so the
loss is 0 and a text-free batch never punishes false positives. Here a batch with no
positive pixel keeps its ``empty_negatives`` hardest negatives instead (1000 by default, at
most all of them), i.e. the loss is the mean BCE of the worst false detections. Set
``empty_negatives=0`` to reproduce the reference.

Everything is computed in float32 with autocast off, whatever dtype the predictions have.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_number
from .data.sample import TARGET_NAMES, DBNetMaps


def _check_weight(name: str, value: float, positive: bool = False) -> float:
    """``value`` as a float: a finite number ``>= 0`` (``> 0`` when ``positive``)."""
    bound = "positive" if positive else "non-negative"
    check_number(
        name,
        value,
        numpy=False,
        minimum=0,
        exclusive_minimum=positive,
        finite=True,
        expected=f"a {bound} finite number",
    )
    return float(value)


def _target(
    batch: Mapping[str, torch.Tensor] | DBNetMaps, key: str, shape: torch.Size
) -> torch.Tensor:
    if isinstance(batch, DBNetMaps):
        batch = {name: getattr(batch, name) for name in TARGET_NAMES}
    if key not in batch:
        raise ValueError(f"DBLoss needs batch[{key!r}], the batch has {', '.join(map(str, batch))}")
    value = batch[key]
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"batch[{key!r}] must have shape {tuple(shape)} (N, H, W), got {found}")
    return value.float()


def _map(pred: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    value = pred[key]
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or value.shape[1] != 1:
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"pred[{key!r}] must have shape (N, 1, H, W), got {found}")
    return value[:, 0].float()


class DBLoss(nn.Module):
    """DBNet's training loss.

    Args:
        prob_weight: Weight of the probability-map BCE.
        binary_weight: Weight of the binary-map Dice loss.
        thresh_weight: Weight of the threshold-map L1 loss.
        ohem_ratio: Negatives kept per positive pixel by hard negative mining.
        eps: Added to every denominator.
        empty_negatives: Hardest negatives kept when the batch has no positive pixel
            (see the module docstring); 0 reproduces the reference.

    Raises:
        TypeError: A parameter of the wrong type.
        ValueError: A negative weight, or a non-positive ``ohem_ratio`` or ``eps``.
    """

    def __init__(
        self,
        prob_weight: float = 1.0,
        binary_weight: float = 1.0,
        thresh_weight: float = 10.0,
        ohem_ratio: float = 3.0,
        eps: float = 1e-6,
        empty_negatives: int = 1000,
    ) -> None:
        super().__init__()
        self.prob_weight = _check_weight("prob_weight", prob_weight)
        self.binary_weight = _check_weight("binary_weight", binary_weight)
        self.thresh_weight = _check_weight("thresh_weight", thresh_weight)
        self.ohem_ratio = _check_weight("ohem_ratio", ohem_ratio, positive=True)
        self.eps = _check_weight("eps", eps, positive=True)
        check_number(
            "empty_negatives",
            empty_negatives,
            integer=True,
            numpy=False,
            minimum=0,
            expected="at least 0",
        )
        self.empty_negatives = empty_negatives

    def forward(
        self, pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor] | DBNetMaps
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss of a batch.

        Args:
            pred: DBNet's output: ``prob_logits`` and, from a model in training mode,
                ``binary`` and ``thresh``, each (N, 1, H, W). Parts whose map is absent
                (eval mode) are left out of the total.
            batch: The targets (``DBNetMaps``, or a mapping by the same names):
                ``prob_map``, ``prob_mask`` and, when ``pred`` has ``thresh``,
                ``thresh_map``, ``thresh_mask``, each (N, H, W) on the device of ``pred``,
                of any dtype (the 0/1 maps arrive as uint8 and are made float here).

        Returns:
            The total (a float32 scalar with gradient) and the detached parts by name
            (``prob``, and ``binary``/``thresh`` when predicted).

        Raises:
            ValueError: A missing map, or maps whose shapes do not match.
        """
        if "prob_logits" not in pred:
            raise ValueError(
                f"DBLoss needs pred['prob_logits'], the prediction has {', '.join(map(str, pred))}"
            )
        with torch.autocast(device_type=pred["prob_logits"].device.type, enabled=False):
            logits = _map(pred, "prob_logits")
            gt = _target(batch, "prob_map", logits.shape)
            mask = _target(batch, "prob_mask", logits.shape)
            parts = {"prob": self._balanced_bce(logits, gt, mask)}
            total = self.prob_weight * parts["prob"]
            if "binary" in pred:
                parts["binary"] = self._dice(_map(pred, "binary"), gt, mask)
                total = total + self.binary_weight * parts["binary"]
            if "thresh" in pred:
                thresh = _map(pred, "thresh")
                thresh_map = _target(batch, "thresh_map", logits.shape)
                thresh_mask = _target(batch, "thresh_mask", logits.shape)
                l1 = ((thresh - thresh_map).abs() * thresh_mask).sum()
                parts["thresh"] = l1 / (thresh_mask.sum() + self.eps)
                total = total + self.thresh_weight * parts["thresh"]
        return total, {k: v.detach() for k, v in parts.items()}

    def _balanced_bce(
        self, logits: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
        positive = gt * mask
        negative = (1 - gt) * mask
        num_pos = int(positive.sum().item())
        available = int(negative.sum().item())
        if num_pos > 0:
            num_neg = min(available, int(num_pos * self.ohem_ratio))
        else:
            num_neg = min(available, self.empty_negatives)
        kept = (loss * positive).sum()
        if num_neg > 0:
            kept = kept + (loss * negative).flatten().topk(num_neg).values.sum()
        return kept / (num_pos + num_neg + self.eps)

    def _dice(self, binary: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        intersection = (binary * gt * mask).sum()
        union = (binary * mask).sum() + (gt * mask).sum() + self.eps
        return 1 - 2 * intersection / union
