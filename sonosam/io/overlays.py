"""`save_overlay_png`: image + masks + prompt markers, for humans to check a result at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputImageError
from .atomic import PathLike, atomic_output
from .segmentations import DEFAULT_COLORS, Segment


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise InputImageError(f"An overlay needs a 2D grayscale (H, W) or colour (H, W, 3) image; got {image.shape}.")
    if image.dtype != np.uint8:
        finite = np.isfinite(image) if image.dtype.kind == "f" else np.ones(image.shape, bool)
        lo, hi = (float(image[finite].min()), float(image[finite].max())) if finite.any() else (0.0, 0.0)
        image = np.where(finite, image, lo).astype(np.float32)
        image = np.rint((image - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(image)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., np.newaxis], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (image borders count as outside)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def save_overlay_png(path: PathLike, image2d_or_rgb: np.ndarray, masks=None, colors=None, points=None,
                     labels=None, box=None, *, alpha: float = 0.4, overwrite: bool = False) -> Path:
    """Write an RGB PNG of the image with masks blended and outlined, and the prompts drawn: a green + for
    each positive point, a red x for each negative one, the box outlined in yellow. Coordinates are
    image pixels (x, y); `colors` are (r, g, b) in 0-1 or 0-255."""
    from PIL import Image, ImageDraw

    canvas = _to_rgb8(image2d_or_rgb).astype(np.float32)
    h, w = canvas.shape[:2]
    if masks is None:
        mask_list: list[np.ndarray] = []
    elif isinstance(masks, np.ndarray) and masks.ndim == 2:
        mask_list = [masks]
    else:
        mask_list = list(masks)
    mask_list = [np.asarray(m).astype(bool) for m in mask_list]
    for m in mask_list:
        if m.shape != (h, w):
            raise InputImageError(f"Mask shape {m.shape} does not match the image ({h}, {w}).")
    palette = [Segment("c", c).color for c in colors] if colors is not None else list(DEFAULT_COLORS)
    if len(palette) < len(mask_list):
        raise InputImageError(f"{len(mask_list)} masks but {len(palette)} colours.")
    for m, color in zip(mask_list, palette):
        rgb = np.asarray(color, np.float32) * 255
        canvas[m] = (1 - alpha) * canvas[m] + alpha * rgb
        canvas[_outline(m)] = rgb
    out = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(out)
    size = max(4, min(h, w) // 60)
    width = max(1, size // 3)
    if points is not None:
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        point_labels = np.ones(len(points), int) if labels is None else np.asarray(labels, int).reshape(-1)
        if len(point_labels) != len(points):
            raise InputImageError(f"{len(points)} points but {len(point_labels)} labels.")
        for (x, y), label in zip(points, point_labels):
            if label > 0:
                draw.line([(x - size, y), (x + size, y)], fill=(0, 255, 0), width=width)
                draw.line([(x, y - size), (x, y + size)], fill=(0, 255, 0), width=width)
            else:
                draw.line([(x - size, y - size), (x + size, y + size)], fill=(255, 0, 0), width=width)
                draw.line([(x - size, y + size), (x + size, y - size)], fill=(255, 0, 0), width=width)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box).reshape(4))
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=(255, 255, 0), width=width)
    with atomic_output(path, overwrite) as tmp:
        out.save(tmp, format="PNG")
    return Path(path)
