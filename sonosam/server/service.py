"""What `sonosam serve` does, without HTTP: one model, one embedding cache, a content-addressed array
store, background jobs (encode, propagate, evaluate, track) and tracker sessions, shared by every client.

Every method takes the request's (meta, arrays) and returns the response's (meta, arrays); bad input
raises `ApiError` (or a SonoSAMError from the core) with a message naming the problem. The HTTP layer
(app.py) maps them to status codes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import wire
from ..errors import CheckpointError, InputImageError, PromptError, SonoSAMError
from ..prompts import Prompts

log = logging.getLogger("sonosam.server")


class ApiError(SonoSAMError):
    """A request the server refuses: `status` is the HTTP code, `code` a stable machine-readable name."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


class JobCancelled(Exception):
    """Raised inside a job's worker when its client cancelled it."""


# ------------------------------------------------------------------------------------------ validation
def _number(value, what: str, *, integer: bool = False, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ApiError(400, "bad_value", f"{what} must be {'an integer' if integer else 'a number'}; got {value!r}.")
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(400, "bad_value", f"{what} = {value!r} is out of range"
                       + (f" [{low}, {high}]" if low is not None or high is not None else "") + ".")
    return value


def _window(value):
    from ..image import check_window

    if value is not None and not isinstance(value, (list, tuple)):   # JSON: a list or null
        raise ApiError(400, "bad_value", f"window must be [low, high]; got {value!r}.")
    try:
        return check_window(value)
    except InputImageError as error:
        raise ApiError(400, "bad_value", str(error)) from None


def _options(value, what: str) -> dict:
    """A request's options object, copied (the handlers pop from it)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "bad_option", f"{what} options must be an object; got {type(value).__name__}.")
    return dict(value)


def check_options(options, defaults: dict, what: str, nullable: frozenset = frozenset()) -> dict:
    """Keyword options sent as JSON: known names only, each of its default's type (numbers for numbers;
    None allowed where the default is None or the name is in ``nullable``), so a bad value is a 400 naming it,
    not a failed job."""
    if not isinstance(options, dict):
        raise ApiError(400, "bad_option", f"{what} options must be an object.")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ApiError(400, "bad_option", f"Unknown {what} option(s) {unknown}; known: {', '.join(sorted(defaults))}.")
    for name, value in options.items():
        default = defaults[name]
        if value is None and (default is None or name in nullable):
            continue
        if isinstance(default, bool) or (default is None and isinstance(value, bool)):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)) or default is None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and (not isinstance(default, int) or isinstance(default, float) or isinstance(value, int))
        elif isinstance(default, str):   # a plain or str-valued enum option (the core checks the value)
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ApiError(400, "bad_option", f"{what} option {name} = {value!r} has the wrong type "
                           f"(default {default!r}).")
    return options


def prompts_from(meta: dict, arrays: dict, width: int, height: int, where: str = "") -> Prompts:
    """meta.prompts {points, labels, box} + the optional 'mask_logits' array -> the core's validated Prompts,
    checked to lie inside a width x height image (PromptError naming the first one outside)."""
    prompts = Prompts.from_json(meta.get("prompts") or {}, mask_logits=arrays.get("mask_logits"))
    try:
        prompts.check_inside(width, height)
    except PromptError as error:
        raise PromptError(f"{where}: {error}" if where else str(error)) from None
    return prompts


def check_image(array: np.ndarray, what: str = "image") -> np.ndarray:
    """A 2D slice (H, W) or an RGB(A) frame (H, W, 3|4) of finite numbers (the core's input gate); the model's
    own preprocessing refuses the rest (too small, constant)."""
    from ..io import check_array

    if array.dtype == bool or array.dtype.kind not in "iuf":
        raise InputImageError(f"The {what} has dtype {array.dtype}; send a numeric array.")
    check_array(array, f"The {what}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))):
        raise InputImageError(f"The {what} has shape {array.shape}; a 2D slice (H, W) or a frame "
                       "(H, W, 3) is needed. Send a volume's slices (or a loop's frames) one by one, or use a job.")
    return array


def check_stack(array: np.ndarray, what: str, *, values: bool = True) -> np.ndarray:
    """A 3D numeric array; `values=False` leaves the pass over every voxel (NaN, infinity) to the job, so that
    starting one answers at once (the job then fails naming the problem)."""
    from ..io import check_array

    if array.dtype == bool or array.dtype.kind not in "iuf":
        raise InputImageError(f"The {what} has dtype {array.dtype}; send a numeric array.")
    if values:
        check_array(array, f"The {what}")
    if array.ndim != 3 or min(array.shape) < 1:
        raise InputImageError(f"The {what} has shape {array.shape}; a 3D array [k, j, i] "
                       "(or [frame, row, column]) is needed.")
    return array


def _geometry(value):
    """Optional geometry sent with an array: spacing, origin (3 numbers each), direction (9), any extra keys
    as plain JSON. Stored and returned, never interpreted by the model (the client maps IJK <-> RAS)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_geometry", "geometry must be an object (spacing, origin, direction).")
    for key, sizes in (("spacing", (2, 3)), ("origin", (2, 3)), ("direction", (4, 9, 16))):
        if key in value:
            entry = value[key]
            if not isinstance(entry, list) or len(entry) not in sizes:
                raise ApiError(400, "bad_geometry", f"geometry.{key} must be a list of {' or '.join(map(str, sizes))} "
                               f"numbers; got {entry!r}.")
            for v in entry:
                _number(v, f"geometry.{key}")
            if key == "spacing" and any(v <= 0 for v in entry):
                raise ApiError(400, "bad_geometry", f"geometry.spacing {entry} must be positive.")
    return value


# ------------------------------------------------------------------------------------------ array store
class ArrayStore:
    """Uploaded arrays by content id, least recently used first out, within a memory budget. An evicted
    id answers 404 `unknown_array` and the client sends it again; jobs hold their own references."""

    def __init__(self, budget_mib: float):
        self.budget = int(budget_mib * 2**20)
        self._items: OrderedDict[str, tuple[np.ndarray, dict | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def put(self, array_id: str, array: np.ndarray, geometry: dict | None, *, owned: bool = False) -> None:
        """`owned`: the array is the server's own buffer (a finished chunked upload): kept without a copy."""
        self.check_fits(array.nbytes)
        if not owned:
            array = np.array(array)  # own copy: the request body is freed
        array.flags.writeable = False
        with self._lock:
            if array_id in self._items:
                self.nbytes -= self._items[array_id][0].nbytes
            self._items[array_id] = (array, geometry)
            self.nbytes += array.nbytes
            while self.nbytes > self.budget and len(self._items) > 1:
                self.nbytes -= self._items.popitem(last=False)[1][0].nbytes

    def check_fits(self, nbytes: int) -> None:
        if nbytes > self.budget:
            raise ApiError(413, "too_large", f"An array of {nbytes / 2**20:.0f} MiB exceeds the server's array "
                           f"store ({self.budget / 2**20:.0f} MiB, --store-mib).")

    def get(self, array_id, what: str = "array") -> np.ndarray:
        return self.entry(array_id, what)[0]

    def has(self, array_id: str) -> bool:
        with self._lock:
            return array_id in self._items

    def entry(self, array_id, what: str = "array") -> tuple[np.ndarray, dict | None]:
        if not isinstance(array_id, str):
            raise ApiError(400, "bad_value", f"The {what} must be named by its content id (a string); got {array_id!r}.")
        with self._lock:
            item = self._items.get(array_id)
            if item is None:
                raise ApiError(404, "unknown_array", f"The server does not hold the {what} {array_id} (never sent, "
                               "or evicted from its store): send it again.")
            self._items.move_to_end(array_id)
            return item

    def missing(self, ids) -> list[str]:
        with self._lock:
            return [i for i in ids if i not in self._items]

    def __len__(self):
        return len(self._items)


class Upload:
    """One array arriving in chunks, in order: each chunk is copied into the final buffer and hashed as it
    lands, so the last one costs no more than the others; `finish` compares the hash with the content id
    the client announced and only then stores the array. Nothing is stored before that."""

    def __init__(self, upload_id: str, content_id: str, dtype: str, shape: list, geometry):
        self.id, self.content_id, self.dtype, self.shape, self.geometry = upload_id, content_id, dtype, shape, geometry
        self.nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        self.buffer = np.empty(self.nbytes, np.uint8)
        self.received = 0
        self.hasher = wire.content_hasher(dtype, shape)
        self.touched = time.monotonic()
        self.lock = threading.Lock()   # one chunk at a time

    def status(self) -> dict:
        return {"upload": self.id, "id": self.content_id, "received": self.received, "nbytes": self.nbytes,
                "stored": False}


class Uploads:
    """Chunked uploads in progress (POST /v1/uploads ...). Their buffers count against the array store's
    budget; one left untouched for `expire_s` is dropped (the client starts it again)."""

    def __init__(self, store: ArrayStore, max_chunk_bytes: int, expire_s: float = 600):
        self.store, self.max_chunk_bytes, self.expire_s = store, max_chunk_bytes, expire_s
        self._items: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def begin(self, meta: dict) -> dict:
        content_id, dtype, shape = meta.get("id"), meta.get("dtype"), meta.get("shape")
        if not isinstance(content_id, str) or not content_id.isalnum() or len(content_id) > 64:
            raise ApiError(400, "bad_value", f"'id' must be the array's content id (sonosam.wire.content_id); "
                           f"got {content_id!r}.")
        if dtype not in wire.DTYPES:
            raise ApiError(400, "bad_value", f"dtype {dtype!r} is not allowed; use one of {', '.join(wire.DTYPES)}.")
        if not isinstance(shape, list) or len(shape) > wire.MAX_NDIM or \
                not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ApiError(400, "bad_value", f"shape {shape!r} must be a list of at most {wire.MAX_NDIM} "
                           "non-negative integers.")
        geometry = _geometry(meta.get("geometry"))
        if self.store.has(content_id):   # a known array: nothing to send
            return {"upload": None, "id": content_id, "received": 0, "nbytes": 0, "stored": True,
                    "max_chunk_bytes": self.max_chunk_bytes}
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        self.store.check_fits(nbytes)
        with self._lock:
            now = time.monotonic()
            for stale in [u for u in self._items.values() if now - u.touched > self.expire_s]:
                self._items.pop(stale.id, None)
            for upload in self._items.values():  # the same array again (an interrupted client): resume it
                if (upload.content_id, upload.dtype, upload.shape) == (content_id, dtype, shape):
                    upload.touched = now
                    return {**upload.status(), "max_chunk_bytes": self.max_chunk_bytes}
            pending = sum(u.nbytes for u in self._items.values())
            if pending + nbytes > self.store.budget:
                raise ApiError(503, "busy_uploading", f"The server is receiving {pending / 2**20:.0f} MiB of other "
                               f"uploads; this {nbytes / 2**20:.0f} MiB array does not fit its store "
                               f"({self.store.budget / 2**20:.0f} MiB) until they finish: try again shortly.")
            upload = Upload(uuid.uuid4().hex, content_id, dtype, shape, geometry)
            self._items[upload.id] = upload
        return {**upload.status(), "max_chunk_bytes": self.max_chunk_bytes}

    def get(self, upload_id: str) -> Upload:
        upload = self._items.get(upload_id)
        if upload is None:
            raise ApiError(404, "unknown_upload", f"No upload {upload_id} on this server (finished, cancelled, "
                           f"untouched for {self.expire_s:.0f} s, or the server restarted): start it again.")
        upload.touched = time.monotonic()
        return upload

    def claim(self, upload_id: str, offset, length: int) -> Upload:
        """The upload, locked for one chunk of `length` bytes at `offset` (release with upload.lock.release())."""
        upload = self.get(upload_id)
        if not upload.lock.acquire(blocking=False):
            raise ApiError(409, "upload_busy", "Another chunk of this upload is arriving: send chunks one at a time.")
        try:
            if not isinstance(offset, int) or offset != upload.received:
                raise ApiError(409, "upload_offset", f"This upload expects its next chunk at byte {upload.received}, "
                               f"not at {offset}: resume from there (GET /v1/uploads/{upload_id}).")
            if length < 1 or length > self.max_chunk_bytes or offset + length > upload.nbytes:
                raise ApiError(400, "bad_chunk", f"A chunk of {length} bytes at {offset} does not fit: chunks hold "
                               f"1..{self.max_chunk_bytes} bytes and the array has {upload.nbytes}.")
        except BaseException:
            upload.lock.release()
            raise
        return upload

    @staticmethod
    def hash_chunk(upload: Upload, length: int) -> dict:
        """Account for the `length` bytes just written at upload.received (under upload.lock)."""
        upload.hasher.update(memoryview(upload.buffer)[upload.received:upload.received + length])
        upload.received += length
        return upload.status()

    def finish(self, upload_id: str) -> dict:
        upload = self.get(upload_id)
        with upload.lock:
            if upload.received != upload.nbytes:
                raise ApiError(409, "upload_incomplete", f"The upload has {upload.received} of its {upload.nbytes} "
                               f"bytes: send the rest from byte {upload.received}, then finish it.")
            with self._lock:
                self._items.pop(upload_id, None)   # whatever happens next, this upload is over
            actual = upload.hasher.hexdigest()
            if actual != upload.content_id:
                raise ApiError(400, "bad_content_id", f"The uploaded bytes hash to {actual}, not {upload.content_id}: "
                               "they were changed on the way (or the id was computed another way: use "
                               "sonosam.wire.content_id). Nothing was kept; send the array again.")
            array = upload.buffer.view(np.dtype(upload.dtype).newbyteorder("<")).reshape(upload.shape)
            if array.dtype == bool and upload.buffer.max(initial=0) > 1:
                raise ApiError(400, "bad_array", "A bool array must hold bytes 0 and 1 only.")
            self.store.put(upload.content_id, array, upload.geometry, owned=True)
        return {"id": upload.content_id, "dtype": upload.dtype, "shape": upload.shape, "stored": True}

    def cancel(self, upload_id: str) -> dict:
        with self._lock:
            self._items.pop(upload_id, None)
        return {"cancelled": upload_id}

    def __len__(self):
        return len(self._items)


def check_ranges(options: dict, ranges: dict, what: str) -> dict:
    """Numeric options (already of the right type, check_options) within ``ranges``: name -> (low, high, low_open);
    out of range is a 400 bad_option naming the option and its range, before the job starts."""
    for name, (low, high, low_open) in ranges.items():
        if name not in options or options[name] is None:
            continue
        value = options[name]
        if value < low or value > high or (low_open and value == low):
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise ApiError(400, "bad_option", f"{what} option {name} = {value!r} is out of range {span}.")
    return options


SEED_RANGE = (0, 2**32 - 1, False)


# ------------------------------------------------------------------------------------------ jobs
@dataclasses.dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"            # queued -> running -> done | failed | cancelled
    done: int = 0
    total: int = 0
    message: str = ""
    error: dict | None = None        # {"type", "message"} when failed
    result: tuple | None = None      # (meta, arrays) when done
    keep: object = None              # server-side object a later request may refer to (propagation result)
    fetched: bool = False            # its result was sent to the client (until then it is never dropped for memory)
    tracker: str | None = None       # a track job's tracker session (never dropped while the job waits or runs)
    created: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total = int(done), int(total)
        if message:
            self.message = message
        if self.cancel_event.is_set():
            raise JobCancelled()

    def status(self) -> dict:
        return {"id": self.id, "kind": self.kind, "state": self.state, "progress": [self.done, self.total],
                "message": self.message, "error": self.error}


def _held_bytes(job: Job) -> int:
    """The bytes a finished job's result holds (its arrays, and the propagation result kept for re-runs)."""
    arrays = list(job.result[1].values()) if job.result else []
    arrays.append(getattr(job.keep, "mask", None))
    return sum(a.nbytes for a in {id(a): a for a in arrays if isinstance(a, np.ndarray)}.values())


class Service:
    JOB_KINDS = ("encode", "propagate", "evaluate", "track", "refine", "assist", "auto")
    ASSIST_BUDGET_MIB = 64   # learned prompt encoders kept for later requests (LiteMedSAM's: ~25 KB each)
    KEEP_PPNS = 4            # prompt predictors kept loaded (a few MB each)
    KEEP_TRACKERS = 8        # tracker sessions kept (each holds its loop's frames); the least recently used goes

    def __init__(self, predictor, store_mib: float = 2048, job_workers: int = 2, keep_jobs: int = 64,
                 max_chunk_bytes: int = 64 * 2**20, results_mib: float = 1024):
        self.predictor = predictor
        self.model = predictor.model
        self.store = ArrayStore(store_mib)
        self.uploads = Uploads(self.store, max_chunk_bytes)
        self._requests: OrderedDict[str, str] = OrderedDict()   # start request id -> job id
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.trackers: dict[str, dict] = {}
        self._uses = itertools.count()                         # tracker recency (a clock can tie)
        self.keep_jobs = keep_jobs
        self.results_budget = int(results_mib * 2**20)   # finished jobs' results (a propagation's: its volume mask)
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=job_workers, thread_name_prefix="sonosam-job")
        # encode-ahead has its own worker: it must not wait behind a long propagation or tracking run
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sonosam-encode")
        self.started = time.time()
        self.requests = 0
        self.assists: OrderedDict[str, tuple] = OrderedDict()   # id -> (AssistedPredictor, nbytes), LRU
        self._ppns: OrderedDict[tuple, object] = OrderedDict()  # (name, size, mtime) or content id -> PromptPredictor
        self._ppn_classes: dict[tuple, list] = {}

    @staticmethod
    def warm_up() -> float:
        """Import what the jobs run (propagation, tracking, evaluation, refiner, assist, auto) now, at start-up:
        imported inside the first job's request they held that client 2-5 s on a loaded machine. Returns seconds."""
        import importlib

        started = time.perf_counter()
        for name in ("volume", "seed_check", "track.tracker", "evaluate", "refine", "assist", "auto", "ppn", "image",
                     "io"):
            importlib.import_module(f"..{name}", __package__)
        return time.perf_counter() - started

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel_event.set()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    # -- info
    def info(self) -> dict:
        spec = self.model.spec
        cache = self.predictor.cache
        with cache._lock:  # other threads add embeddings meanwhile
            embeddings, cache_mib = len(cache), round(cache.nbytes / 2**20, 1)
        with self._lock:
            states = [j.state for j in self.jobs.values()]
            held = sum(_held_bytes(j) for j in self.jobs.values())
        return {"model": spec.name, "description": spec.description, "prompt_kinds": sorted(spec.prompt_kinds),
                "multimask": bool(spec.multimask), "image_size": spec.image_size, "device": str(self.model.device),
                "backend": self.model.backend, "model_id": self.model.model_id,
                "cache": {"embeddings": embeddings, "mib": cache_mib,
                          "budget_mib": round(cache.budget_bytes / 2**20, 1), "spilled": cache.spilled},
                "store": {"arrays": len(self.store), "mib": round(self.store.nbytes / 2**20, 1),
                          "budget_mib": round(self.store.budget / 2**20, 1), "uploads": len(self.uploads)},
                "jobs": {state: states.count(state) for state in ("queued", "running", "done", "failed", "cancelled")},
                "results_mib": round(held / 2**20, 1), "trackers": len(self.trackers),
                "assists": len(self.assists), "ppn": self.ppn_files(),
                "encoder_calls": self.predictor.encoder_calls, "uptime_s": round(time.time() - self.started, 1),
                "cpu_s": time.process_time()}  # this process's CPU time (benchmarks measure overhead with it)

    # -- arrays
    def put_array(self, array_id: str, meta: dict, arrays: dict) -> dict:
        if set(arrays) != {"array"}:
            raise ApiError(400, "bad_message", f"An upload carries exactly one array named 'array'; got {sorted(arrays)}.")
        array = arrays["array"]
        actual = wire.content_id(array)
        if actual != array_id:
            raise ApiError(400, "bad_content_id", f"The array's content id is {actual}, not {array_id}: the bytes "
                           "were changed on the way, or the id was computed another way (use sonosam.wire.content_id).")
        self.store.put(array_id, array, _geometry(meta.get("geometry")))
        return {"id": array_id, "dtype": array.dtype.name, "shape": list(array.shape)}

    def missing(self, meta: dict) -> dict:
        ids = meta.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "bad_value", "'ids' must be a list of content ids.")
        return {"missing": self.store.missing(ids)}

    # -- interactive
    def _image(self, meta: dict, field: str = "image") -> tuple[str, np.ndarray]:
        image_id = meta.get(field)
        return image_id, check_image(self.store.get(image_id, field), field)

    def embed(self, meta: dict) -> dict:
        image_id, image = self._image(meta)
        window = _window(meta.get("window"))
        cached = self.predictor.is_cached(("array", image_id), window)
        started = time.perf_counter()
        embedding = self.predictor.embedding(image, key=("array", image_id), window=window)
        return {"cached": cached, "seconds": time.perf_counter() - started,
                "original_size": list(embedding.original_size), "input_size": list(embedding.input_size)}

    def is_cached(self, meta: dict) -> dict:
        ids = meta.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "bad_value", "'ids' must be a list of content ids.")
        window = _window(meta.get("window"))
        return {"cached": [self.predictor.is_cached(("array", i), window) for i in ids]}

    def predict(self, meta: dict, arrays: dict) -> tuple[dict, dict]:
        image_id, image = self._image(meta)
        window = _window(meta.get("window"))
        multimask = meta.get("multimask", False)
        if not isinstance(multimask, bool):
            raise ApiError(400, "bad_value", f"multimask must be true or false; got {multimask!r}.")
        prompts = prompts_from(meta, arrays, image.shape[1], image.shape[0])
        started = time.perf_counter()
        predictor = self._interactive_for(meta)
        prediction = predictor.predict(image, prompts, multimask=multimask, key=("array", image_id), window=window)
        return ({"scores": prediction.scores.tolist(), "notes": list(prediction.notes),
                 "seconds": time.perf_counter() - started},
                {"masks": prediction.masks, "low_res_logits": prediction.low_res_logits.astype(np.float32)})

    # -- jobs
    def start_job(self, meta: dict, arrays: dict) -> dict:
        kind = meta.get("kind")
        if kind not in self.JOB_KINDS:
            raise ApiError(400, "bad_job", f"Unknown job kind {kind!r}; the server runs {', '.join(self.JOB_KINDS)}.")
        params = meta.get("params") or {}
        if not isinstance(params, dict):
            raise ApiError(400, "bad_job", "'params' must be an object.")
        request = meta.get("request")   # the client's name for this start: sent again after a late answer
        if request is not None:
            if not isinstance(request, str) or not 0 < len(request) <= 64:
                raise ApiError(400, "bad_value", "'request' must be a short string naming this start.")
            with self._lock:
                known = self.jobs.get(self._requests.get(request, ""))
            if known is not None:
                return known.status()
        run = getattr(self, f"_prepare_{kind}")(params, arrays)  # validates now: bad input is a 4xx, not a failed job
        job = Job(uuid.uuid4().hex, kind, tracker=params.get("tracker") if kind == "track" else None)
        with self._lock:
            self.jobs[job.id] = job
            self._forget_old_jobs()
            if request is not None:
                self._requests[request] = job.id
                while len(self._requests) > 1024:
                    self._requests.popitem(last=False)
        (self._encoder if kind == "encode" else self._workers).submit(self._run_job, job, run)
        return job.status()

    def _forget_old_jobs(self) -> None:
        """Keep the newest `keep_jobs` finished jobs of each kind (frequent encode-ahead jobs must not push
        out the propagation a re-run refers to as `previous`), and their results within the results budget: the
        oldest go first; never the newest result of a kind (a re-run's `previous`) nor one its client has not
        fetched yet."""
        for kind in self.JOB_KINDS:
            finished = [j for j in self.jobs.values() if j.kind == kind and j.finished is not None]
            for job in finished[:max(0, len(finished) - self.keep_jobs)]:
                self.jobs.pop(job.id, None)
        holding = sorted((j for j in self.jobs.values() if j.finished is not None and _held_bytes(j)),
                         key=lambda j: j.finished)
        newest = {j.kind: j for j in holding}
        held = sum(_held_bytes(j) for j in holding)
        for job in holding:
            if held <= self.results_budget:
                break
            if job.fetched and newest[job.kind] is not job:
                held -= _held_bytes(job)
                self.jobs.pop(job.id, None)

    def _run_job(self, job: Job, run) -> None:
        if job.cancel_event.is_set():
            job.state, job.finished = "cancelled", time.time()
            return
        job.state = "running"
        try:
            outcome = run(job)
            if job.cancel_event.is_set():
                raise JobCancelled()
            job.result = outcome[:2]
            job.keep = outcome[2] if len(outcome) > 2 else None
            job.state = "done"
        except JobCancelled:
            job.state, job.result, job.message = "cancelled", None, "cancelled by the client; nothing was kept"
        except SonoSAMError as error:
            job.state, job.error = "failed", {"type": _error_type(error), "message": str(error)}
        except Exception as error:  # noqa: BLE001 - reported to the client, logged here
            log.error("job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc())
            job.state, job.error = "failed", {"type": "ServerError",
                                              "message": f"internal error in the {job.kind} job: "
                                                         f"{type(error).__name__}: {error}"}
        finally:
            job.finished = time.time()
            with self._lock:
                self._forget_old_jobs()

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise ApiError(404, "unknown_job", f"No job {job_id} on this server (finished jobs are kept until "
                           f"{self.keep_jobs} newer ones of their kind finish, or their results outgrow "
                           f"{self.results_budget / 2**20:.0f} MiB, and none survives a restart).")
        return job

    def cancel_job(self, job_id: str) -> dict:
        job = self.job(job_id)
        job.cancel_event.set()
        if job.state == "queued":
            job.state, job.finished = "cancelled", time.time()
        return job.status()

    def job_result(self, job_id: str) -> tuple[dict, dict]:
        job = self.job(job_id)
        if job.state == "done":
            meta, arrays = job.result
            job.fetched = True
            return {**meta, "job": job.status()}, arrays
        if job.state == "failed":
            raise ApiError(409, "job_failed", f"The {job.kind} job failed: {job.error['message']}")
        if job.state == "cancelled":
            raise ApiError(409, "job_cancelled", f"The {job.kind} job was cancelled; it has no result.")
        raise ApiError(409, "job_running", f"The {job.kind} job is {job.state} ({job.done}/{job.total}); "
                       "poll it until its state is 'done'.")

    def delete_job(self, job_id: str) -> dict:
        job = self.job(job_id)
        job.cancel_event.set()
        with self._lock:
            self.jobs.pop(job_id, None)
        return {"deleted": job_id}

    # zero-shot refiner (sonosam.refine): a coarse probability map of one structure -> points -> mask
    def _prepare_refine(self, params: dict, arrays: dict):
        from ..refine import check_clicks, coarse_probabilities, refine

        image_id, image = self._image(params)
        coarse = np.asarray(self.store.get(params.get("coarse"), "coarse"))
        try:   # the command line's rule: floats 0..1 (a small overshoot clipped), or a 0..255 integer picture
            coarse = coarse_probabilities(coarse)
        except SonoSAMError as error:
            raise ApiError(422, "bad_coarse", str(error)) from None
        if coarse.shape != image.shape[:2] or not np.isfinite(coarse).all() or coarse.min() < 0:
            raise ApiError(422, "bad_coarse", f"The coarse map ({coarse.shape}) must hold probabilities 0..1 on the "
                           f"image's grid {image.shape[:2]}.")
        context = None
        if params.get("context") is not None:
            context = np.asarray(self.store.get(params["context"], "context")).astype(bool)
            if context.shape != coarse.shape:
                raise ApiError(422, "bad_context", f"The context mask {context.shape} must be shaped like the "
                               f"image {coarse.shape}.")
        options = check_options(_options(params.get("options"), "refine"), {"seed": 0, "steps": 100}, "refine")
        check_ranges(options, {"seed": SEED_RANGE, "steps": (1, 2000, False)}, "refine")
        window = _window(params.get("window"))
        predictor = self._predictor_for(params)
        check_clicks(predictor.model)   # a box-only model: refused now (422), not a failed job

        def run(job: Job):
            steps = options.get("steps", 100)
            job.progress(0, steps, "encoding")
            embedding = self.predictor.embedding(image, key=("array", image_id), window=window)
            result = refine(predictor, image, coarse, context=context, embedding=embedding, **options,
                            progress=lambda s, n: job.progress(s, n, f"step {s}/{n}"))
            job.progress(steps, steps)
            return ({"positives": result.positives.tolist(), "negatives": result.negatives.tolist(), "k": result.k,
                     "score": result.score, "steps": len(result.losses)}, {"mask": result.mask})
        return run

    # encode-ahead: the images' embeddings into the shared cache
    def _prepare_encode(self, params: dict, arrays: dict):
        ids = params.get("images")
        if not isinstance(ids, list) or not ids:
            raise ApiError(400, "bad_job", "An encode job needs 'images': a list of content ids.")
        images = [(i, check_image(self.store.get(i, "image"))) for i in ids]
        window = _window(params.get("window"))
        # with 'prompts' (a box the user just drew): also the crops its answer needs (sonosam.zoom), so that the
        # answer then only decodes
        prompts = [prompts_from(params, {}, image.shape[1], image.shape[0], "encode job") for _, image in images] \
            if params.get("prompts") is not None else None
        zoomed = self._interactive_for({}) if prompts is not None else None

        def run(job: Job):
            job.progress(0, len(images))
            for n, (image_id, image) in enumerate(images, start=1):
                self.predictor.embedding(image, key=("array", image_id), window=window)
                if hasattr(zoomed, "prepare"):
                    zoomed.prepare(image, prompts[n - 1], key=("array", image_id), window=window)
                job.progress(n, len(images))
            return {"encoded": len(images)}, {}
        return run

    # propagation through a volume (sonosam.volume.propagate)
    def _prepare_propagate(self, params: dict, arrays: dict):
        from ..volume import PropagationOptions, Seed, check_span, propagate

        volume_id = params.get("volume")
        volume = check_stack(self.store.get(volume_id, "volume"), "volume", values=False)  # voxels: in the job
        axis = params.get("axis", 0)
        if not (type(axis) is int and axis in (0, 1, 2)) and axis not in ("k", "j", "i", "K", "J", "I"):
            raise ApiError(400, "bad_value", f"axis must be 0, 1, 2 (or k, j, i); got {axis!r}.")
        axis = axis if type(axis) is int else "kji".index(axis.lower())
        n, plane = volume.shape[axis], tuple(s for a, s in enumerate(volume.shape) if a != axis)
        seeds = []
        if not isinstance(params.get("seeds") or [], list):
            raise ApiError(400, "bad_seed", "'seeds' must be a list of seed objects.")
        for entry in params.get("seeds") or []:
            if not isinstance(entry, dict):
                raise ApiError(400, "bad_seed", "Each seed is an object with index and box/points/labels/mask.")
            index = _number(entry.get("index"), "seed index", integer=True, low=0, high=n - 1)
            mask = None
            if entry.get("mask") is not None:
                mask = arrays.get(entry["mask"]) if isinstance(entry["mask"], str) else None
                if mask is None or mask.shape != plane:
                    raise ApiError(400, "bad_seed", f"Seed {index}: mask array {entry['mask']!r} must be sent with "
                                   f"the job, shaped {plane}.")
                mask = np.asarray(mask).astype(bool)
            p = prompts_from({"prompts": {k: entry.get(k) for k in ("points", "labels", "box")}}, {},
                             plane[1], plane[0], f"seed on slice {index}")
            seeds.append(Seed(index, box=None if p.box is None else p.box.tolist(),
                              points=p.points.tolist() if len(p.points) else None,
                              labels=p.labels.tolist() if len(p.points) else None, mask=mask))
        options = _options(params.get("options"), "propagation")
        window = _window(options.pop("window", None))
        span = options.pop("span", None)
        if span is not None:
            if not isinstance(span, list) or not all(type(v) is int for v in span):
                raise ApiError(400, "bad_option", f"span must be [first, last], two integers; got {span!r}.")
            try:
                span = check_span(span, n, seeds)
            except PromptError as error:
                raise ApiError(400, "bad_option", str(error)) from None
        fields = [f for f in dataclasses.fields(PropagationOptions) if f.name not in ("window", "span")]
        nullable = frozenset(f.name for f in fields if "None" in str(f.type))   # e.g. carrier: str | None = "auto"
        options = PropagationOptions(**check_options(options, {f.name: f.default for f in fields}, "propagation",
                                                     nullable), window=window,
                                     span=span)
        previous = None
        if params.get("previous") is not None:
            earlier = self.job(params["previous"])
            previous = earlier.keep
            if earlier.kind != "propagate" or previous is None:
                raise ApiError(409, "bad_previous", f"Job {params['previous']} is not a finished propagation.")
        if not seeds and previous is None:
            raise ApiError(400, "bad_seed", "Give at least one seed slice (a box, points or a mask).")
        predictor = self._predictor_for(params)

        def run(job: Job):
            def progress(done, total, info):
                job.progress(done, total, f"slice {info.index}: {info.status}")
            check_stack(volume, "volume")
            result = propagate(predictor, volume, seeds, axis=axis, options=options, previous=previous,
                               volume_id="vol-" + volume_id, progress=progress, cancel=job.cancel_event)
            if result.cancelled:
                raise JobCancelled()
            # an accepted (mask) seed has no predicted IoU (nan): JSON has no nan, it travels as null
            slices = {str(i): {k: (None if isinstance(v, float) and v != v else v)
                               for k, v in dataclasses.asdict(s).items()} for i, s in result.slices.items()}
            meta = {"axis": result.axis, "slices": slices, "anchors": sorted(result.anchors),
                    "summary": result.summary(), "seconds": result.seconds, "encoder_calls": result.encoder_calls,
                    "decoded": result.decoded, "carrier": result.carrier, "replaced": result.replaced,
                    "added": result.added}
            return meta, {"mask": result.mask}, result
        return run

    # the simulated-click protocol (sonosam.evaluate) on the labelled slices of a volume
    def _prepare_evaluate(self, params: dict, arrays: dict):
        from ..evaluate import evaluate, samples_from_arrays, summary_table
        from ..image import to_uint8_rgb

        volume_id = params.get("volume")
        volume = check_stack(self.store.get(volume_id, "volume"), "volume", values=False)  # voxels: in the job
        labelmap = self.store.get(params.get("labelmap"), "labelmap")
        if labelmap.shape != volume.shape or labelmap.dtype.kind not in "iub":
            raise ApiError(422, "bad_labelmap", f"The labelmap {labelmap.shape} {labelmap.dtype} must be an integer "
                           f"array shaped like the volume {volume.shape}.")
        n_clicks = _number(params.get("n_clicks", 10), "n_clicks", integer=True, low=1, high=50)
        start = params.get("start", "auto")
        if start not in ("auto", "point", "box"):
            raise ApiError(400, "bad_value", f"start must be auto, point or box; got {start!r}.")
        local = params.get("local_corrections", False)
        if not isinstance(local, bool):
            raise ApiError(400, "bad_value", f"local_corrections must be true or false; got {local!r}.")
        labels = params.get("labels")
        slices = params.get("slices")
        for name, value in (("labels", labels), ("slices", slices)):
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, int) for v in value)):
                raise ApiError(400, "bad_value", f"{name} must be a list of integers.")
        min_area = _number(params.get("min_area", 100), "min_area", integer=True, low=0)
        window = _window(params.get("window"))
        name = str(params.get("name", "volume"))[:200]

        def make_samples():  # a pass over the volume: inside the job, so that starting it answers at once
            check_stack(volume, "volume")
            samples = samples_from_arrays(volume, labelmap, labels=labels, axis=0, min_area=min_area, name=name,
                                          slices=slices, kind="volume")
            if not samples:
                raise InputImageError(f"No labelled slice of at least {min_area} pixels to evaluate on.")
            for sample in samples:  # windowed as the interactive tool shows them, keyed by content
                sample.image = to_uint8_rgb(sample.image, window=window)
                sample.key = ("evaluate", volume_id, window, sample.key[-1], sample.label)
            return samples

        class Counted:  # reports progress (and honours cancel) as evaluate() walks the samples
            def __init__(self, job, samples):
                self.job, self.samples = job, samples

            def __len__(self):
                return len(self.samples)

            def __iter__(self):
                for n, sample in enumerate(self.samples):
                    self.job.progress(n, len(self.samples), f"sample {n + 1}/{len(self.samples)}")
                    yield sample
                self.job.progress(len(self.samples), len(self.samples))

        predictor = self._interactive_for(params)

        def run(job: Job):
            job.progress(0, 0, "reading the labelled slices")
            result = evaluate(predictor, Counted(job, make_samples()), n_clicks=n_clicks, start=start, progress=False,
                              local_corrections=local)
            return {"table": summary_table([result]), "result": dataclasses.asdict(result)}, {}
        return run

    # SAM^assist (sonosam.assist): the prompt encoder learned from 2-5 accepted slices, kept here under an id
    def _predictor_for(self, params: dict):
        """The shared predictor, or the assisted one a request names with 'assist' (an id from an assist job)."""
        assist_id = params.get("assist")
        if assist_id is None:
            return self.predictor
        with self._lock:
            entry = self.assists.get(assist_id) if isinstance(assist_id, str) else None
            if entry is not None:
                self.assists.move_to_end(assist_id)
        if entry is None:
            raise ApiError(404, "unknown_assist", f"The server holds no learned prompt encoder {assist_id!r} (forgotten "
                           f"to stay within {self.ASSIST_BUDGET_MIB} MiB, or the server restarted): learn it again.")
        return entry[0]

    def _interactive_for(self, params: dict):
        """What a user's prompts go through: the shared predictor with its model's box scales
        (sonosam.zoom.interactive_predictor), or the assisted one a request names (measured on the whole image)."""
        from ..zoom import interactive_predictor

        predictor = self._predictor_for(params)
        return interactive_predictor(predictor) if predictor is self.predictor else predictor

    def _keep_assist(self, assisted) -> str:
        nbytes = sum(p.numel() * p.element_size() for p in assisted.model.sam.prompt_encoder.parameters())
        assist_id = uuid.uuid4().hex
        with self._lock:
            self.assists[assist_id] = (assisted, nbytes)
            while len(self.assists) > 1 and sum(e[1] for e in self.assists.values()) > self.ASSIST_BUDGET_MIB * 2**20:
                self.assists.popitem(last=False)
        return assist_id

    def _stack_and_slices(self, params: dict, what: str):
        volume_id = params.get("volume")
        volume = check_stack(self.store.get(volume_id, "volume"), "volume")
        slices = params.get("slices")
        if slices is None and what == "auto":
            slices = list(range(volume.shape[0]))
        if not isinstance(slices, list) or not slices or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in slices):
            raise ApiError(400, "bad_value", f"The {what} job needs 'slices': a list of slice indices (axis 0).")
        bad = [v for v in slices if not 0 <= v < volume.shape[0]]
        if bad:
            raise ApiError(422, "bad_slices", f"Slice {bad[0]} is outside the volume's 0..{volume.shape[0] - 1}.")
        return volume_id, volume, slices

    def _prepare_assist(self, params: dict, arrays: dict):
        from ..assist import MAX_SLICES, check_slices, learn_assist

        _, volume, slices = self._stack_and_slices(params, "assist")
        try:
            check_slices(slices)
        except SonoSAMError as error:
            raise ApiError(422, "bad_slices", str(error)) from None
        masks = arrays.get("masks")
        if masks is None or masks.shape != (len(slices),) + volume.shape[1:3]:
            raise ApiError(422, "bad_masks", f"Send the accepted masks as the array 'masks' shaped "
                           f"{(len(slices),) + volume.shape[1:3]} (one per slice); got "
                           f"{None if masks is None else masks.shape}.")
        masks = np.asarray(masks).astype(bool)
        empty = [s for s, m in zip(slices, masks) if not m.any()]
        if empty:
            raise ApiError(422, "bad_masks", f"The mask of slice {empty[0]} is empty: accept a segmented slice.")
        options = check_options(_options(params.get("options"), "assist"), {"steps": 30, "seed": 0, "lr": 5e-3, "batch": 2,
                                                                    "kinds": ["box", "point"]}, "assist")
        if "kinds" in options:
            kinds = options["kinds"]
            if not kinds or not all(k in ("box", "point") for k in kinds):
                raise ApiError(400, "bad_option", f"assist option kinds must list 'box' and/or 'point'; got {kinds!r}.")
            options["kinds"] = tuple(kinds)
        check_ranges(options, {"steps": (1, 2000, False), "seed": SEED_RANGE, "lr": (0, 1, True),
                               "batch": (1, MAX_SLICES, False)}, "assist")
        window = _window(params.get("window"))

        def run(job: Job):
            steps = options.get("steps", 30)
            job.progress(0, steps, f"encoding {len(slices)} slices")
            assisted = learn_assist(self.predictor, volume, slices, list(masks), window=window, key=_slice_key(volume),
                                    progress=lambda s, n, loss: job.progress(s, n, f"step {s}/{n}: loss {loss:.3f}"),
                                    **options)
            result = assisted.result
            assist_id = self._keep_assist(assisted)
            return ({"assist": assist_id, "slices": slices, "seconds": result.seconds,
                     "encode_seconds": result.encode_seconds, "losses": result.losses,
                     "trained_parameters": result.trained_parameters, "config": result.config,
                     "model": assisted.model.spec.name,
                     "prompt_kinds": sorted(str(getattr(k, "value", k)) for k in assisted.model.spec.prompt_kinds)}, {})
        return run

    # the prompt predictor (sonosam.auto / sonosam.ppn): a class on slices of a volume, no clicks
    def ppn_files(self) -> list[dict]:
        """The prompt predictors in the server's PPN folder ($SONOSAM_HOME/ppn) with their classes."""
        from ..auto import PPN_SUFFIXES, ppn_dir

        folder, out = ppn_dir(), []
        if not folder.is_dir():
            return out
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(PPN_SUFFIXES) or not path.is_file():
                continue
            stat = path.stat()
            key = (path.name, stat.st_size, stat.st_mtime_ns)
            if key not in self._ppn_classes:
                try:
                    self._ppn_classes[key] = list(self._load_ppn(path, key).classes)
                except SonoSAMError:
                    self._ppn_classes[key] = None   # not a prompt predictor: not listed
            if self._ppn_classes[key] is not None:
                out.append({"name": path.name, "classes": self._ppn_classes[key]})
        return out

    def _load_ppn(self, path, key):
        from ..ppn import load_ppn

        with self._lock:
            ppn = self._ppns.get(key)
            if ppn is not None:
                self._ppns.move_to_end(key)
                return ppn
        try:
            ppn = load_ppn(path)   # weights only (no pickle code)
        except SonoSAMError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. UnpicklingError for a file that is not a torch file
            raise CheckpointError(f"{Path(path).name}: not a readable prompt predictor ({type(error).__name__}); "
                                  "it is written by `sonosam train ppn`.") from None
        with self._lock:
            self._ppns[key] = ppn
            while len(self._ppns) > self.KEEP_PPNS:
                self._ppns.popitem(last=False)
        return ppn

    def _ppn_for(self, params: dict, arrays: dict):
        """The PPN a job names: 'ppn' = a file name in the server's PPN folder, or the array 'ppn' = the file's
        bytes (uint8) sent with the job. Never a path the client chooses."""
        import tempfile

        from ..auto import find_ppn, ppn_dir

        sent = arrays.get("ppn")
        if sent is not None:
            if sent.dtype != np.uint8 or sent.ndim != 1:
                raise ApiError(422, "bad_ppn", "The array 'ppn' must hold the prompt predictor file's bytes (uint8, 1D).")
            key = ("sent", wire.content_id(sent))
            with self._lock:
                ppn = self._ppns.get(key)
            if ppn is not None:
                return ppn
            folder = ppn_dir().parent
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="sonosam-ppn-", dir=folder) as tmp:  # under the cache folder
                path = Path(tmp) / "sent.ppn.pt"
                path.write_bytes(sent.tobytes())
                try:
                    return self._load_ppn(path, key)
                except SonoSAMError as error:
                    raise ApiError(422, "bad_ppn", f"The prompt predictor sent is not readable: "
                                   f"{str(error).replace(str(path) + ': ', '')}") from None
        name = params.get("ppn")
        try:
            path = find_ppn(name)
        except SonoSAMError as error:
            raise ApiError(404 if isinstance(name, str) and name == Path(name).name else 400, "unknown_ppn",
                           str(error)) from None
        stat = path.stat()
        try:
            return self._load_ppn(path, (path.name, stat.st_size, stat.st_mtime_ns))
        except SonoSAMError as error:
            raise ApiError(422, "bad_ppn", str(error)) from None

    def _prepare_auto(self, params: dict, arrays: dict):
        from ..auto import auto_segment_stack

        _, volume, slices = self._stack_and_slices(params, "auto")
        ppn = self._ppn_for(params, arrays)
        class_name = params.get("class")
        if not isinstance(class_name, str) or class_name not in ppn.classes:
            raise ApiError(422, "unknown_class", f"This prompt predictor knows {', '.join(ppn.classes)}; "
                           f"not {class_name!r}.")
        threshold = float(_number(params.get("threshold", 0.5), "threshold", low=0, high=1))
        window = _window(params.get("window"))

        def run(job: Job):
            job.progress(0, len(slices), f"{class_name}: starting")

            def progress(done, total, info):
                job.progress(done, total, f"slice {info.index}: " + (f"{class_name} found (objectness "
                             f"{info.objectness:.2f})" if info.present else f"no {class_name}"))
            result = auto_segment_stack(ppn, self.predictor, volume, class_name, slices, threshold=threshold,
                                        window=window, key=_slice_key(volume), progress=progress,
                                        cancel=job.cancel_event)
            if result.cancelled:
                raise JobCancelled()
            return ({"class": class_name, "slices": [s.as_dict() for s in result.slices], "seconds": result.seconds,
                     "summary": result.summary()}, {"masks": result.masks})
        return run

    # cine tracking: a tracker session lives on the server; `track` jobs run it until done or paused
    def create_tracker(self, meta: dict, arrays: dict) -> dict:
        from dataclasses import fields

        from ..track.tracker import Tracker, TrackerOptions

        frames_id = meta.get("frames")
        frames = check_stack(self.store.get(frames_id, "frames"), "frames")
        defaults = {f.name: f.default for f in fields(TrackerOptions)} | {"prefetch": True}
        options = check_options(meta.get("options") or {}, defaults, "tracker")
        tracker = Tracker(self.predictor, frames, pause=bool(meta.get("pause", True)), key="frames-" + frames_id,
                          **options)
        tracker_id = uuid.uuid4().hex
        with self._lock:
            self.trackers[tracker_id] = {"tracker": tracker, "lock": threading.Lock(), "frames": frames_id,
                                         "used": next(self._uses)}
            waited_on = {j.tracker for j in self.jobs.values() if j.tracker and j.finished is None}
            idle = sorted((e["used"], i) for i, e in self.trackers.items()
                          if i != tracker_id and i not in waited_on and not e["lock"].locked())
            dropped = [self.trackers.pop(i) for _, i in idle[:max(0, len(self.trackers) - self.KEEP_TRACKERS)]]
        for entry in dropped:
            entry["tracker"].close()
        return {"id": tracker_id, "n_frames": tracker.n_frames}

    def _tracker(self, tracker_id):
        entry = self.trackers.get(tracker_id) if isinstance(tracker_id, str) else None
        if entry is None:
            raise ApiError(404, "unknown_tracker", f"No tracker {tracker_id} on this server (deleted, or dropped "
                           f"for newer ones: it keeps {self.KEEP_TRACKERS}; or the server restarted): start tracking "
                           "again.")
        entry["used"] = next(self._uses)
        return entry

    def tracker_call(self, tracker_id: str, action: str, meta: dict, arrays: dict) -> tuple[dict, dict]:
        entry = self._tracker(tracker_id)
        tracker = entry["tracker"]
        if not entry["lock"].acquire(blocking=False):
            raise ApiError(409, "tracker_busy", "This tracker is running a job: wait for it (or cancel it) first.")
        try:
            if action in ("add_object", "correct"):
                name = meta.get("name")
                if not isinstance(name, str) or not name:
                    raise ApiError(400, "bad_value", "Give the object's 'name'.")
                frame = _number(meta.get("frame"), "frame", integer=True, low=0, high=tracker.n_frames - 1)
                mask = arrays.get("mask")
                if mask is not None and mask.shape != tracker.frames.shape[1:]:
                    raise ApiError(400, "bad_mask", f"The mask is {mask.shape}; the frames are "
                                   f"{tracker.frames.shape[1:]}.")
                p = prompts_from(meta, {}, tracker.frames.shape[2], tracker.frames.shape[1], f"frame {frame}")
                kwargs = {"mask": mask, "box": p.box, "points": p.points if len(p.points) else None,
                          "labels": p.labels if len(p.points) else None}
                if action == "add_object":
                    threshold = meta.get("threshold")
                    if threshold is not None:
                        _number(threshold, "threshold", low=0, high=1)
                    out = tracker.add_object(name, frame, threshold=threshold, **kwargs)
                else:
                    out = tracker.correct(frame, name, **kwargs)
                return {}, {"mask": out}
            if action == "accept":
                tracker.accept(_number(meta.get("frame"), "frame", integer=True), str(meta.get("name")))
                return {}, {}
            if action == "state":
                return self._tracker_state(tracker)
            raise ApiError(404, "bad_action", f"Unknown tracker action {action!r}.")
        finally:
            entry["lock"].release()

    def delete_tracker(self, tracker_id: str) -> dict:
        entry = self._tracker(tracker_id)
        entry["tracker"].close()
        with self._lock:   # create_tracker walks the dict in a worker thread
            self.trackers.pop(tracker_id, None)
        return {"deleted": tracker_id}

    @staticmethod
    def _tracker_state(tracker) -> tuple[dict, dict]:
        names = list(tracker.objects)
        objects = {}
        for name in names:
            obj = tracker.objects[name]
            objects[name] = {"keyframes": sorted(obj.keyframes), "threshold": obj.threshold,
                             "sources": [None if r is None else r.source for r in obj.results]}
        masks = np.stack([tracker.masks(name) for name in names]) if names else np.zeros((0,) + tracker.frames.shape, bool)
        meta = {"names": names, "objects": objects, "events": [e.as_dict() for e in tracker.events],
                "threshold": tracker.options.threshold, "n_frames": tracker.n_frames, "timing": tracker.timing}
        return meta, {"masks": masks, "confidences": tracker.confidences().astype(np.float64)}

    def _prepare_track(self, params: dict, arrays: dict):
        entry = self._tracker(params.get("tracker"))
        tracker = entry["tracker"]
        rerun = bool(params.get("rerun", False))

        def run(job: Job):
            if not entry["lock"].acquire(timeout=5):
                raise ApiError(409, "tracker_busy", "This tracker is already running a job.")
            try:
                # pending requests, results: the tracker's own; a cancel raises out of on_progress between
                # frames, so every finished frame stays consistent and the next run resumes from there
                report = (tracker.rerun if rerun else tracker.run)(on_progress=lambda d, t: job.progress(d, t))
                meta, arrays_out = self._tracker_state(tracker)
                meta["report"] = {"paused": report.paused, "frame": report.frame, "processed": report.processed,
                                  "events": [e.as_dict() for e in report.events]}
                return meta, arrays_out
            finally:
                entry["lock"].release()
        return run


def _slice_key(volume: np.ndarray):
    """Cache keys of a volume's slices by their content, as /v1/predict keys the image it is sent: a click on a
    slice that an assist or auto job encoded is answered from the cache."""
    return lambda index: ("array", wire.content_id(volume[index]))


def _error_type(error: BaseException) -> str:
    """The most specific sonosam.errors class name of `error` (what the client re-raises)."""
    from .. import errors

    for cls in type(error).__mro__:
        if getattr(errors, cls.__name__, None) is cls:
            return cls.__name__
    return "SonoSAMError"


__all__ = ["ApiError", "ArrayStore", "Job", "Service", "check_image", "InputImageError"]
