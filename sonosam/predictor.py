"""Interactive prediction: encode each image once, answer every click from the cached embedding.

The cache is keyed by (model, image key): give a key such as ("volume-id", axis, index) when you
know the image's identity; otherwise the image's bytes are hashed. Embeddings can be computed ahead
of the user in a background thread (`prefetch`), so that a slice or frame is ready when they land on it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
import weakref
from pathlib import Path
from typing import Callable, Hashable, Iterable

import numpy as np
import torch

from .errors import InputImageError
from .image import check_window
from .masks import content_hash
from .models import Embedding, Prediction, SamModel
from .prompts import Prompts, as_prompts

ImageSource = "np.ndarray | Callable[[], np.ndarray]"


def image_key(image: np.ndarray, window=None) -> str:
    """Content key of an image: same pixels (and window) -> same embedding."""
    array = np.ascontiguousarray(image)
    if array.dtype.hasobject or array.dtype.kind not in "buif":  # None, objects, strings: say so, before hashing
        raise InputImageError(f"The image is {type(image).__name__} of dtype {array.dtype}; give a numeric "
                              f"(integer or float) array, (H, W) or (H, W, 3).")
    return content_hash(array, str(window))


def check_key(key: Hashable | None) -> Hashable | None:
    """A cache key as given (lists read as tuples, also inside tuples); one that cannot be hashed is refused."""
    if isinstance(key, (list, tuple)):
        key = tuple(check_key(k) for k in key)
    try:
        hash(key)
    except TypeError:
        raise InputImageError(f"key={key!r} cannot name an image in the cache; give a string, a number or a tuple "
                              "of them.") from None
    return key


class EmbeddingCache:
    """Least-recently-used embeddings within a memory budget (MiB); thread-safe.

    With `spill` (True for a private temporary folder, or a folder path), embeddings pushed out of memory
    are written to disk in float16 (half the bytes; masks match, see docs/speed.md) instead of being
    dropped, up to `spill_mib` on disk, and come back into memory when asked for again."""

    def __init__(self, budget_mib: float = 1024, spill: bool | str | Path = False, spill_mib: float = 8192):
        self.budget_bytes = int(budget_mib * 2**20)
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._spill_dir: Path | None = None
        self._spilled: OrderedDict[Hashable, tuple] = OrderedDict()  # key -> (file, sizes, model id, device)
        self.spill_budget_bytes = int(spill_mib * 2**20)
        if spill:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="sonosam-spill-", dir=None if spill is True else spill))
            weakref.finalize(self, shutil.rmtree, str(self._spill_dir), True)

    def get(self, key: Hashable) -> Embedding | None:
        with self._lock:
            embedding = self._items.get(key)
            if embedding is not None:
                self._items.move_to_end(key)
                return embedding
            if key not in self._spilled:
                return None
            embedding = self._unspill(key)
        if embedding is not None:
            self.put(key, embedding)
        return embedding

    def put(self, key: Hashable, embedding: Embedding) -> None:
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.budget_bytes:
                old_key, old = self._items.popitem(last=False)
                if self._spill_dir is not None:
                    self._spill(old_key, old)

    def _spill(self, key: Hashable, embedding: Embedding) -> None:
        features = embedding.features.detach().to("cpu", torch.float16).numpy()
        path = self._spill_dir / f"{hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()}.npy"
        np.save(path, features)
        self._spilled[key] = (path, embedding.original_size, embedding.input_size, embedding.model_id,
                              embedding.features.device, embedding.features.dtype)
        self._spilled.move_to_end(key)
        while len(self._spilled) > 1 and self.spilled_nbytes > self.spill_budget_bytes:
            self._spilled.popitem(last=False)[1][0].unlink(missing_ok=True)

    def _unspill(self, key: Hashable) -> Embedding | None:
        path, original_size, input_size, model_id, device, dtype = self._spilled.pop(key)
        try:
            features = torch.from_numpy(np.load(path)).to(device=device, dtype=dtype)
        except (OSError, ValueError):
            return None
        finally:
            path.unlink(missing_ok=True)
        return Embedding(features, original_size, input_size, model_id)

    @property
    def spilled_nbytes(self) -> int:
        return sum(entry[0].stat().st_size for entry in self._spilled.values() if entry[0].exists())

    @property
    def spilled(self) -> int:
        """How many embeddings are on disk now."""
        return len(self._spilled)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items or key in self._spilled

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            for entry in self._spilled.values():
                entry[0].unlink(missing_ok=True)
            self._spilled.clear()


class PrefetchJob:
    """A background encoding run over a list of images; cancel() stops it after the current image."""

    def __init__(self, total: int):
        self.total = total
        self.done_count = 0
        self._cancel = threading.Event()
        self.future: Future | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until finished; re-raises an error from the worker."""
        self.future.result(timeout)


def _same_size(embedding: Embedding, image, key) -> Embedding:
    shape = None if callable(image) else np.shape(image)[:2]
    if shape is not None and tuple(shape) != tuple(embedding.original_size):
        (h, w), (height, width) = embedding.original_size, shape
        raise InputImageError(f"key={key!r} names a {w}x{h} image in the cache; this one is {width}x{height}: give "
                              "each image its own key (or none: the pixels are then the key).")
    return embedding


class Predictor:
    def __init__(self, model: SamModel, cache_mib: float = 1024, spill: bool | str | Path = False):
        self.model = model
        self.cache = EmbeddingCache(cache_mib, spill=spill)  # spill: evicted embeddings go to disk in fp16
        self.encoder_calls = 0
        self._encoding: dict[Hashable, Future] = {}  # keys being encoded now, by any thread
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonosam-prefetch")

    def _cache_key(self, image, key, window) -> tuple:
        return (self.model.model_id, key if key is not None else image_key(image, window), window)

    def is_cached(self, key: Hashable, window=None) -> bool:
        return (self.model.model_id, check_key(key), check_window(window)) in self.cache

    def embedding(self, image: ImageSource, key: Hashable | None = None, window=None) -> Embedding:
        """The image's embedding, from the cache, from an encoding already under way, or encoded now. A ``key``
        names one image: given again with an image of another size, it is refused (the cached answer would be
        the other image's)."""
        key, window = check_key(key), check_window(window)
        if callable(image) and key is None:
            image = image()
        cache_key = self._cache_key(image, key, window)
        embedding = self.cache.get(cache_key)
        if embedding is not None:
            return _same_size(embedding, image, key)
        with self._lock:
            pending = self._encoding.get(cache_key)
            owner = pending is None
            if owner:
                pending = self._encoding[cache_key] = Future()
        if not owner:  # another thread is encoding this very image: wait for it instead of encoding twice
            return _same_size(pending.result(), image, key)
        try:
            embedding = self.model.encode(image() if callable(image) else image, window)
            self.encoder_calls += 1
            self.cache.put(cache_key, embedding)
            pending.set_result(embedding)
            return embedding
        except BaseException as error:
            pending.set_exception(error)
            raise
        finally:
            with self._lock:
                self._encoding.pop(cache_key, None)

    def embed_together(self, items: Iterable[tuple[Hashable, ImageSource]], window=None) -> list[Embedding]:
        """Encode (key, image) items in one batch and cache each under its key: for encoders that must see
        neighbouring slices together (Med-SA's SD-Trans). Items already cached are encoded again with the
        rest, so that every slice of the slab is encoded in the same context."""
        items = [(check_key(key), image) for key, image in items]
        window = check_window(window)
        images = [image() if callable(image) else image for _, image in items]
        embeddings = self.model.encode_many(images, window, batch_size=len(images))
        self.encoder_calls += 1
        for (key, image), embedding in zip(items, embeddings):
            self.cache.put(self._cache_key(image, key, window), embedding)
        return embeddings

    def predict(self, image: ImageSource, prompts: Prompts | None = None, *, points=None, labels=None, box=None,
                mask_logits=None, multimask: bool = False, key: Hashable | None = None, window=None) -> Prediction:
        """Masks for `prompts` on `image`, from the cached embedding. Scripts may give the keyword
        conveniences (points, labels, box, mask_logits) instead of a Prompts; not both."""
        prompts = as_prompts(prompts, points=points, labels=labels, box=box, mask_logits=mask_logits)
        embedding = self.embedding(image, key, window)
        return self.model.decode(embedding, prompts, multimask=multimask)

    def prefetch(self, items: Iterable[tuple[Hashable, ImageSource]], window=None,
                 on_progress: Callable[[int, int], None] | None = None) -> PrefetchJob:
        """Encode (key, image-or-callable) items in the background thread, nearest first as given.

        Only one prefetch runs at a time: a new one waits for the previous, so cancel the old job
        when the user moves on.
        """
        items = list(items)
        job = PrefetchJob(len(items))

        def run():
            for key, image in items:
                if job.cancelled:
                    return
                if not self.is_cached(key, window):
                    self.embedding(image, key, window)
                job.done_count += 1
                if on_progress is not None:
                    on_progress(job.done_count, job.total)

        job.future = self._worker.submit(run)
        return job

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
