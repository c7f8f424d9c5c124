"""Losses on low-resolution mask logits (B, 1, 256, 256)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_loss", "focal_loss", "dice_focal_loss", "bernoulli_kl", "soft_dice", "embedding_loss", "prompt_loss",
           "hard_dice", "click_loss", "bce_dice_loss", "MASK_LOSSES"]


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample soft Dice of sigmoid(logits) against a {0,1} (or soft) target; shape (B,)."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    return (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)


def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample Dice of the thresholded mask (logits > 0) against the target; shape (B,)."""
    return soft_dice((logits > 0).float() * 40 - 20, target)


def dice_loss(logits, target):
    return 1 - soft_dice(logits, target)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet / SAM), mean over pixels; shape (B,)."""
    logits, target = logits.float(), target.float()
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_focal_loss(logits, target, focal_weight: float = 20.0) -> torch.Tensor:
    """Dice + focal (SAM's 1:20 weighting of Dice and focal); shape (B,)."""
    return dice_loss(logits, target) + focal_weight * focal_loss(logits, target)


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(student || teacher) of the per-pixel foreground probabilities, mean over pixels; shape (B,)."""
    p = torch.sigmoid(student_logits.float()).clamp(eps, 1 - eps)
    q = torch.sigmoid(teacher_logits.float()).clamp(eps, 1 - eps)
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    return kl.flatten(1).mean(1)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared error of image embeddings (B, C, h, w) relative to the teacher's energy, per sample: 0 is a
    perfect copy, 1 is as far as all-zero embeddings; shape (B,). MobileSAM's embedding distillation is
    the plain MSE; dividing by the teacher's mean square makes the value (and its weight) scale-free."""
    student, teacher = student.float().flatten(1), teacher.float().flatten(1)
    return ((student - teacher) ** 2).mean(1) / (teacher ** 2).mean(1).clamp(min=1e-12)


def bce_dice_loss(logits, target) -> torch.Tensor:
    """Per sample: mean binary cross-entropy + soft Dice loss (MedSAM's loss); shape (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten(1).mean(1)
    return bce + dice_loss(logits, target)


MASK_LOSSES = {"dice_focal": dice_focal_loss, "bce_dice": bce_dice_loss}


def prompt_loss(logits: torch.Tensor, iou: torch.Tensor, target: torch.Tensor, iou_weight: float = 1.0,
                mask_loss: str = "dice_focal") -> torch.Tensor:
    """Per sample: the mask loss (``MASK_LOSSES``: SAM's DiceFocal, or BCE + soft Dice) + ``iou_weight`` x the
    squared error of the predicted IoU against the real IoU of the thresholded mask (SAM's loss for one prompt
    iteration). logits/target (B, 1, H, W), iou (B, M)."""
    hard = (logits.detach() > 0).float()
    inter = (hard * target).flatten(1).sum(1)
    union = (hard + target).clamp(max=1).flatten(1).sum(1)
    real_iou = inter / union.clamp(min=1)
    return MASK_LOSSES[mask_loss](logits, target) + iou_weight * (iou.float()[:, 0] - real_iou) ** 2


def click_loss(logits: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, image_size: int) -> torch.Tensor:
    """Per sample: the mean binary cross-entropy of the logits read (bilinearly) under each click against the
    click's label (1 positive, 0 negative; other labels, such as padding, are skipped). The mask losses weigh the
    clicked pixel as one of 65,536, so a decoder can learn to ignore a corrective click; this term asks it to
    follow each one. logits (B, 1, L, L); points (B, N, 2) x, y in encoder-input pixels (``image_size`` square)."""
    grid = (points.float() + 0.5) / image_size * 2 - 1   # + 0.5: the pixel's centre, as SAM's prompt encoder reads it
    values = F.grid_sample(logits.float(), grid[:, :, None, :], mode="bilinear", align_corners=False)[:, 0, :, 0]
    valid = (labels == 0) | (labels == 1)
    bce = F.binary_cross_entropy_with_logits(values, (labels == 1).float(), reduction="none") * valid
    return bce.sum(1) / valid.sum(1).clamp(min=1)
