"""Image embeddings computed once and kept on disk, so that training epochs only run the decoder.

The image encoder is frozen during decoder fine-tuning, so its output for an image never changes. Each
embedding is stored as ``<folder>/<encoder id>/<image hash>.npy`` (float16 by default: 2 MiB for a
256x64x64 embedding), where the encoder id hashes the encoder's weights with its input size and intensity
normalisation (two models that share an encoder share the cache) and the image hash covers the pixels,
their shape/dtype and the intensity window (``sonosam.predictor.image_key``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..models.sam import encoder_id
from ..predictor import image_key

__all__ = ["EmbeddingStore", "CachedEmbedding", "encoder_id", "input_size_for"]


def input_size_for(shape: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) of an (H, W) image after resizing its longest side to ``image_size`` (SAM's rule)."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return tuple(ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], image_size))


@dataclass
class CachedEmbedding:
    features: torch.Tensor          # (256, 64, 64) float32 on CPU
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class EmbeddingStore:
    """Disk cache of one model's image embeddings.

    >>> store = EmbeddingStore("runs/cache", model)
    >>> store.precompute(images)            # encodes only what is missing
    >>> emb = store.get(image)              # CachedEmbedding (encodes and stores it when missing)
    """

    def __init__(self, folder: str | Path, model, dtype: str = "float16", memory: bool = True):
        self.model = model
        self.folder = Path(folder) / encoder_id(model)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.encoder_calls = 0
        self._memory: dict[str, torch.Tensor] | None = {} if memory else None

    def key(self, image: np.ndarray, window=None) -> str:
        return image_key(image, window)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def has(self, image: np.ndarray, window=None) -> bool:
        return self.path(self.key(image, window)).is_file()

    def get(self, image: np.ndarray, window=None, key: str | None = None) -> CachedEmbedding:
        key = key or self.key(image, window)
        shape = tuple(np.asarray(image).shape[:2])
        input_size = input_size_for(shape, self.model.spec.image_size)
        features = self._memory.get(key) if self._memory is not None else None
        if features is not None:
            features = features.float()
        else:
            path = self.path(key)
            if path.is_file():
                features = torch.from_numpy(np.load(path).astype(np.float32))
            else:
                features = self._encode_and_store(image, window, path)
            if self._memory is not None:   # kept at the stored precision: half the memory of float32
                self._memory[key] = features.to(getattr(torch, self.dtype.name))
        return CachedEmbedding(features, shape, input_size)

    def _encode_and_store(self, image, window, path: Path) -> torch.Tensor:
        embedding = self.model.encode(image, window)
        self.encoder_calls += 1
        array = embedding.features[0].float().cpu().numpy().astype(self.dtype)
        handle, temp = tempfile.mkstemp(suffix=".npy.part", dir=self.folder)
        with os.fdopen(handle, "wb") as out:
            np.save(out, array)
        os.replace(temp, path)  # atomic: a killed run never leaves half a file
        return torch.from_numpy(array.astype(np.float32))

    def precompute(self, images: Iterable[np.ndarray], window=None, progress: bool = True) -> int:
        """Encode every image not yet on disk; returns how many were encoded."""
        unique: dict[str, np.ndarray] = {}
        for image in images:
            unique.setdefault(self.key(image, window), image)
        todo = [(k, im) for k, im in unique.items() if not self.path(k).is_file()]
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="encoding (cached on disk)", unit="img")
        for key, image in todo:
            self._encode_and_store(image, window, self.path(key))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return len(todo)
