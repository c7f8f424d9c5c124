"""Talk to a `sonosam serve` process: the `Predictor` interface (predict, embedding, prefetch, is_cached)
and long jobs (propagate, evaluate, track, encode) over HTTP. numpy + the standard library only: Slicer's
Python imports this without torch (tested in a subprocess).

    from sonosam.client import start_local_server
    server = start_local_server(model="litemedsam_clicks")      # python -m sonosam serve on 127.0.0.1:<free port>
    client = server.client()                                    # or SonoSAMClient(url, token) for a GPU host
    prediction = client.predict(image, points=[(120, 80)], labels=[1])
    job = client.start_job("propagate", volume=volume, seeds=[{"index": 40, "mask": mask40}], axis=0)
    job.poll()  -> {"state": "running", "progress": [12, 90], "message": ...};  job.cancel();  job.result()
    job = client.prepare_job("propagate", ...)        # a GUI's way: each job.poll(timeout=GUI_POLL_SECONDS) from
                                                      # its timer sends a step of the volume, then starts the job
    upload = client.begin_upload(volume); upload.step() per tick until True; upload.id
    server.stop()

Images and volumes are sent once: each array is named by its content hash (sonosam.wire.content_id); the
server keeps them in a store (re-sending is skipped) and answers 404 for an evicted one, which the client
then sends again by itself. Arrays above UPLOAD_CHUNK_BYTES travel in chunks (ArrayUpload: resumable,
checked against the hash before anything is stored). Errors are the core's SonoSAMError subclasses (PromptError, InputImageError, ...)
with the server's message; a server that stops answering raises ServerUnavailableError naming what happened.
"""

from __future__ import annotations

import collections
import copy
import http.client
import json
import math
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable

import numpy as np

from . import errors, wire
from .errors import JobCancelledError, PromptError, ServerError, ServerUnavailableError, SonoSAMError
from .processes import own_group, stop_tree
from .prompts import Prediction, Prompts

TOKEN_ENV = "SONOSAM_SERVER_TOKEN"  # the same name as sonosam.server.TOKEN_ENV (that module imports torch)
FINISHED = ("done", "failed", "cancelled")
GUI_POLL_SECONDS = 0.1  # a poll from a GUI timer holds that thread no longer, on a link faster than that (else what
                        # the link takes, up to GUI_SEND_SECONDS: SonoSAMClient._limit_for)
UPLOAD_CHUNK_BYTES = 2**20  # arrays above this travel in chunks of it: ~10 ms each on loopback (docs/slicer.md)
MIN_CHUNK_BYTES = 2**16     # chunks shrink after a late one down to this (ArrayUpload._smaller_chunks)
GUI_STEP_SECONDS = 0.03  # an upload step from a GUI timer works (hashes, sends chunks) for about this long
GUI_SEND_SECONDS = 1.0   # a GUI poll that sends (a chunk, a slice, a job's start) may take this long: sending needs
                         # the time the link takes (1 MiB is 0.4 s at 20 Mbit/s), which GUI_POLL_SECONDS is not

__all__ = ["SonoSAMClient", "Prediction", "RemoteJob", "ArrayUpload", "ServerTimeoutError", "RemotePrefetchJob",
           "RemotePropagationResult",
           "RemoteTracker", "LocalServer", "start_local_server"]


class ServerTimeoutError(ServerUnavailableError, TimeoutError):
    """The server did not answer in time (busy or hung); RemoteJob.poll(timeout=) treats it as 'still running'."""


def _raise_for(status: int, body: dict, context: str = "") -> None:
    """The server's refusal as the core's own error class when it names one (PromptError, ...)."""
    message = body.get("message") or f"HTTP {status}"
    if context:
        message = f"{context}: {message}"
    cls = getattr(errors, str(body.get("type")), None)
    if isinstance(cls, type) and issubclass(cls, SonoSAMError) and not issubclass(cls, ServerError) \
            and cls is not SonoSAMError:
        raise cls(message)
    raise ServerError(message, status, str(body.get("error", "")))


class SonoSAMClient:
    """One server, any number of threads (each keeps its own connection)."""

    def __init__(self, url: str, token: str, *, timeout: float = 600, cafile: str | None = None,
                 server: "LocalServer | None" = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SonoSAMError(f"Server URL {url!r} must look like http://HOST:PORT or https://HOST:PORT.")
        if not token:
            raise SonoSAMError("Give the server's token (printed by `sonosam serve`, or in its --token-file).")
        self.url = url.rstrip("/")
        self._scheme, self._host = parsed.scheme, parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": wire.CONTENT_TYPE}
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=cafile) if parsed.scheme == "https" else None
        self.server = server          # a LocalServer: its exit code and log make connection errors clearer
        self._local = threading.local()
        self._sent: set[str] = set()  # content ids this client knows the server holds
        self._keys: dict = {}         # caller's image keys -> (content id, (H, W)), like the Predictor's cache keys
        self._info: dict | None = None
        self.assist: str | None = None  # a learned prompt encoder on the server (with_assist) used by predict/jobs
        self._link_seconds, self._link_known = 0.0, False   # what a short request takes on this link (_limit_for)

    # ---------------------------------------------------------------------------------------- transport
    def _limit_for(self, timeout: float | None) -> float | None:
        """A GUI's short time limit stretched to what this link takes, never past GUI_SEND_SECONDS: on a link
        slower than GUI_POLL_SECONDS every poll would come late and a job would never be seen to finish."""
        if timeout is None or timeout >= GUI_SEND_SECONDS:
            return timeout
        return min(max(timeout, self._link_seconds), GUI_SEND_SECONDS)

    def _learn_link(self, limit: float | None, elapsed: float | None) -> None:
        """Twice the time an answer took, when it came within GUI_SEND_SECONDS (a poll, a status; longer ones are
        encodes and uploads, not the link). A late GUI answer stretches the limit only while no answer was ever
        timed: once the link is known, a late answer is a busy or hung server, which must not hold the GUI longer."""
        if elapsed is not None:
            if elapsed < GUI_SEND_SECONDS:
                self._link_seconds, self._link_known = 2 * elapsed, True
        elif limit is not None and limit < GUI_SEND_SECONDS and not self._link_known:
            self._link_seconds = min(2 * limit, GUI_SEND_SECONDS)

    def _connection(self, fresh: bool = False, timeout: float | None = None):
        """(this thread's connection, whether it was opened just now). ``timeout`` bounds opening one (a GUI's:
        a host that does not answer must not hold it for the client's whole timeout)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn, False
        if conn is not None:
            conn.close()
            self._local.conn = None
        limit = self.timeout if timeout is None else timeout
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=limit, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=limit)
        conn.connect()
        # requests and answers are small bursts: without this, Nagle's algorithm meeting delayed ACKs can hold
        # a round trip for ~40 ms
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.conn = conn
        return conn, True

    def _unavailable(self, reason: BaseException | str, context: str) -> ServerUnavailableError:
        what = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        message = f"The SonoSAM server at {self.url} is not answering ({what})"
        if context:
            message += f" {context}"
        if self.server is not None:
            message += f"; {self.server.describe()}"
        else:
            message += "; it was stopped, crashed or cannot be reached"
        return ServerUnavailableError(message + ". Start it again (or check the URL and network) and repeat.")

    def _request(self, method: str, path: str, meta: dict | None = None, arrays: dict | None = None, *,
                 context: str = "", body: bytes | None = None, timeout: float | None = None,
                 content_type: str | None = None):
        """-> dict (JSON answer) or (meta, arrays) (wire answer); refusals raise, see _raise_for. `timeout`:
        seconds for this answer (default: the client's); a late answer raises ServerTimeoutError."""
        if body is None and (meta is not None or arrays):
            body = wire.encode(meta, arrays)
        if body is not None and len(body) > 2**20 and path != "/v1/info":
            # the server would refuse it from its header and close while we still send: say why here
            limit = (self._info or self.info()).get("max_request_mib", float("inf")) * 2**20
            if len(body) > limit:
                raise ServerError(f"A request of {len(body) / 2**20:.1f} MiB exceeds the server's limit of "
                                  f"{limit / 2**20:.0f} MiB (sonosam serve --max-request-mib).", 413, "too_large")
        asked, timeout, started = timeout, self._limit_for(timeout), time.monotonic()
        for attempt in (0, 1):
            conn, opened = None, True
            try:
                conn, opened = self._connection(fresh=attempt > 0, timeout=timeout)
                conn.sock.settimeout(self.timeout if timeout is None else timeout)
                headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
                deadline = None if timeout is None else time.monotonic() + timeout
                conn.request(method, path, body=body, headers=headers)
                if deadline is not None:  # an explicit timeout bounds sending and answer together (GUI polls)
                    conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady) as error:
                self.close()
                if attempt == 0 and not opened:  # a kept-alive connection the server had closed: once more, fresh
                    continue
                raise self._unavailable(error, context) from None
            except ssl.SSLError as error:
                self.close()
                raise ServerUnavailableError(
                    f"The TLS connection to {self.url} failed ({error}). For a server with a self-signed certificate "
                    "give that certificate: SonoSAMClient(url, token, cafile='cert.pem'); else check the URL.") from None
            except (TimeoutError, socket.timeout):
                self.close()  # the answer may still come: this connection is out of step, drop it
                self._learn_link(timeout if asked is not None else None, None)
                limit = self.timeout if timeout is None else timeout
                raise ServerTimeoutError(f"The SonoSAM server at {self.url} gave no answer within {limit:g} s "
                                         f"{context}".rstrip() + ".") from None
            except OSError as error:  # refused, unreachable, unknown host
                self.close()
                raise self._unavailable(error, context) from None
        self._learn_link(timeout, time.monotonic() - started)
        if response.status >= 400:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = {"message": data[:300].decode(errors="replace")}
            _raise_for(response.status, payload if isinstance(payload, dict) else {})
        if response.getheader("Content-Type", "").startswith(wire.CONTENT_TYPE):
            return wire.decode(data)
        return json.loads(data)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---------------------------------------------------------------------------------------- arrays
    def upload(self, array: np.ndarray, geometry: dict | None = None, array_id: str | None = None) -> str:
        """Send an array once (by content); returns its content id. `geometry` (spacing, origin, direction)
        is kept with it on the server. Arrays above UPLOAD_CHUNK_BYTES travel in chunks (ArrayUpload), here
        all at once; a GUI drives `begin_upload(...).step()` from its timer instead."""
        array = np.asarray(array)
        if array.nbytes > UPLOAD_CHUNK_BYTES:
            upload = ArrayUpload(self, array, geometry, array_id=array_id)
            while not upload.step(budget=1.0):
                pass
            return upload.id
        array_id = array_id or wire.content_id(array)
        if array_id not in self._sent:
            self._request("PUT", f"/v1/arrays/{array_id}", {"geometry": geometry}, {"array": array},
                          context="sending an array")
            self._sent.add(array_id)
        return array_id

    def begin_upload(self, array: np.ndarray, geometry: dict | None = None, what: str = "array") -> "ArrayUpload":
        """A chunked upload that does nothing until stepped: call `step()` from a GUI timer until it returns
        True, then use `.id`. See ArrayUpload."""
        return ArrayUpload(self, array, geometry, what=what)

    def _image_id(self, image, key: Hashable | None) -> tuple[str, np.ndarray | None]:
        """(content id, the array when it was materialised). A known `key` skips reading the image at all."""
        if key is not None:
            known = self._keys.get(_hashable(key))
            if known is not None:
                return known, None
        array = np.asarray(image() if callable(image) else image)
        array_id = wire.content_id(array)
        if key is not None:
            self._keys[_hashable(key)] = array_id
        return array_id, array

    def _with_image(self, image, key, call):
        """Run call(content_id), sending the image first when the server lacks it (or evicted it)."""
        array_id, array = self._image_id(image, key)
        if array is not None and array_id not in self._sent:
            self.upload(array, array_id=array_id)
        try:
            return call(array_id)
        except ServerError as error:
            if error.code != "unknown_array":
                raise
            self._sent.discard(array_id)
            if array is None:
                array = np.asarray(image() if callable(image) else image)
            self.upload(array, array_id=array_id)
            return call(array_id)

    # ---------------------------------------------------------------------------------------- Predictor API
    def info(self) -> dict:
        """Model name, prompt kinds, device, backend, cache and store use, jobs."""
        self._info = self._request("GET", "/v1/info", context="asking for its info")
        return self._info

    @property
    def spec(self):
        """The served model's spec (name, prompt_kinds, multimask, image_size), like model.spec in-process."""
        info = self._info or self.info()
        kinds = getattr(self, "_assist_kinds", None) or frozenset(info["prompt_kinds"])
        return types.SimpleNamespace(name=info["model"] + ("+assist" if self.assist else ""),
                                     description=info["description"], prompt_kinds=kinds,
                                     multimask=info["multimask"], image_size=info["image_size"])

    @property
    def model(self):
        """A stand-in for predictor.model: .spec, .model_id, .device, .backend (the server's)."""
        info = self._info or self.info()
        return types.SimpleNamespace(spec=self.spec, model_id=info["model_id"], device=info["device"],
                                     backend=info["backend"])

    @property
    def encoder_calls(self) -> int:
        return int(self.info()["encoder_calls"])

    def embedding(self, image, key: Hashable | None = None, window=None) -> dict:
        """Encode the image on the server now (into the shared cache); returns {cached, seconds, original_size,
        input_size}. The embedding itself stays on the server."""
        return self._with_image(image, key, lambda array_id: self._request(
            "POST", "/v1/embed", {"image": array_id, "window": _window(window)}, context="encoding an image"))

    def is_cached(self, key: Hashable, window=None, timeout: float | None = None) -> bool:
        return self.cached([key], window, timeout)[0]

    def cached(self, keys: Iterable[Hashable], window=None, timeout: float | None = None) -> list[bool]:
        """Whether each image (by its key) is encoded on the server: one request for them all (none when no key
        was seen yet). ``timeout``: a GUI's (a late answer raises ServerTimeoutError)."""
        ids = [self._keys.get(_hashable(key)) for key in keys]
        known = [i for i in ids if i is not None]
        if not known:
            return [False] * len(ids)
        answer = iter(self._request("POST", "/v1/cached", {"ids": known, "window": _window(window)},
                                    context="asking what it has encoded", timeout=timeout)["cached"])
        return [i is not None and bool(next(answer)) for i in ids]

    def predict(self, image, prompts=None, *, points=None, labels=None, box=None, mask_logits=None,
                multimask: bool = False, key: Hashable | None = None, window=None) -> Prediction:
        """As sonosam.predictor.Predictor.predict: a Prompts object or the points/labels/box/mask_logits keywords."""
        if prompts is None:  # the core's Prompts (numpy only) checks shapes and labels here, before any request
            prompts = Prompts(points, labels, box, mask_logits)
        elif any(v is not None for v in (points, labels, box, mask_logits)):
            raise PromptError("Give either a Prompts or the points/labels/box/mask_logits keywords, not both.")
        meta = {"prompts": prompts.to_json(), "multimask": bool(multimask), "window": _window(window)}
        if self.assist is not None:
            meta["assist"] = self.assist
        arrays = {"mask_logits": prompts.mask_logits}

        def call(array_id):
            answer, out = self._request("POST", "/v1/predict", {**meta, "image": array_id}, arrays,
                                        context="predicting a mask")
            return Prediction(out["masks"], np.asarray(answer["scores"], np.float32), out["low_res_logits"],
                              list(answer.get("notes", [])), float(answer.get("seconds", 0.0)))
        return self._with_image(image, key, call)

    def prefetch(self, items: Iterable[tuple[Hashable, object]], window=None,
                 on_progress: Callable[[int, int], None] | None = None, box=None) -> "RemotePrefetchJob":
        """Encode (key, image-or-callable) items ahead on the server, nearest first as given. The images are
        sent now (those the server lacks); the encoding runs there. Returns a job with done, done_count,
        total, cancel(), wait() like the in-process PrefetchJob (`on_progress` is called from poll/wait).
        ``box``: a box just drawn on these images: the zoomed crops its answer needs are encoded too, where the
        served model answers boxes at several scales (sonosam.zoom), so that the answer only decodes.
        A GUI uses ``prepare_prefetch`` instead: nothing is sent until its timer polls."""
        job = self.prepare_prefetch(items, window, on_progress, box)
        job.job.start()
        return job

    def prepare_prefetch(self, items: Iterable[tuple[Hashable, object]], window=None,
                         on_progress: Callable[[int, int], None] | None = None, box=None) -> "RemotePrefetchJob":
        """prefetch's job before it starts: no request yet. Each ``done`` (a GUI timer's poll) sends a step of the
        images this client has not sent (at most GUI_POLL_SECONDS of requests), then starts the encode job, then
        asks how it stands. An image the server dropped since is sent again when the start says so."""
        uploads, ids = {}, []
        for n, (key, image) in enumerate(items):
            array_id, array = self._image_id(image, key)
            array = np.asarray(image() if callable(image) else image) if array is None else array
            ids.append(f"image{n}")   # one already sent is done at once, and sent again if the server dropped it
            uploads[ids[-1]] = ArrayUpload(self, array, array_id=array_id, what="image")
        prompts = None if box is None else Prompts(box=box).to_json()   # checked here, before any request
        params = {"images": ids, "window": _window(window), "prompts": prompts}
        return RemotePrefetchJob(RemoteJob(self, None, "encode", pending=(params, {}, uploads)), len(ids), on_progress)

    def close_session(self) -> None:
        self.close()

    def with_assist(self, assist_id: str | None, prompt_kinds=None) -> "SonoSAMClient":
        """This client answering with a prompt encoder learned by an ``assist`` job (its result's "assist" id;
        ``prompt_kinds``: the result's, what the assisted model takes): predict and the propagate / evaluate /
        refine jobs name it; None gives the base model back. A view: the connection, the arrays sent and the
        image keys are shared with this client."""
        view = copy.copy(self)
        view.assist = assist_id
        view._assist_kinds = None if assist_id is None or prompt_kinds is None else frozenset(prompt_kinds)
        return view

    # ---------------------------------------------------------------------------------------- jobs
    def start_job(self, kind: str, **params) -> "RemoteJob":
        """Start a long job on the server; returns at once with a RemoteJob to poll, cancel and fetch.

        propagate: volume (array), seeds [{"index", "box" | "points"+"labels" | "mask" (2D bool array)}],
                   axis, previous (an earlier RemotePropagationResult or job id), window, and any
                   sonosam.volume.PropagationOptions field (direction, max_slices, ...)
        evaluate:  volume, labelmap (arrays, same shape), labels, slices, n_clicks, start, min_area, window, name
        track:     tracker (a RemoteTracker or its id), rerun
        refine:    image, coarse (probabilities 0..1, or a 0..255 integer picture; same grid), context (bool mask,
                   optional), seed, steps, window;
                   result(): (meta {positives, negatives, k, score, steps}, {"mask": HxW bool})
        encode:    images (content ids of uploaded arrays), window, prompts (optional {"box": [x0, y0, x1, y1]}: also
                   the zoomed crops that box's answer needs, where the model answers boxes at several scales)
        assist:    volume (array (n, H, W)), slices (2-5 indices on axis 0), masks ((len(slices), H, W) bool), window,
                   kinds, steps, seed, lr, batch; result(): {"assist": id for with_assist(), slices, seconds,
                   encode_seconds, losses, trained_parameters, config}
        auto:      volume, slices (default all), class_name, ppn (a file name in the server's PPN folder) or ppn_bytes
                   (the file's bytes), threshold, window; result(): (meta {class, slices [{index, present,
                   objectness, score, box}], seconds, summary}, {"masks": (len(slices), H, W) bool})
        """
        job = self.prepare_job(kind, **params)
        job.start()
        return job

    def prepare_job(self, kind: str, **params) -> "RemoteJob":
        """start_job's job before it starts: nothing is sent yet. Its polls (`poll(timeout=)`, from a GUI
        timer) send its arrays a step at a time (state "sending", progress in MiB), then start it on the
        server, then report its status; `cancel()` before the start sends nothing more and keeps nothing."""
        arrays: dict = {}
        uploads: dict[str, ArrayUpload] = {}
        if self.assist is not None and kind in ("propagate", "evaluate", "refine"):
            params = {**params, "assist": self.assist}
        if kind == "propagate":
            params = self._propagate_params(params, arrays, uploads)
        elif kind == "evaluate":
            params = dict(params)
            params["volume"] = self._array_param(params.get("volume"), "volume", uploads)
            params["labelmap"] = self._array_param(params.get("labelmap"), "labelmap", uploads)
            params["window"] = _window(params.get("window"))
        elif kind == "refine":
            params = dict(params)
            for name in ("image", "coarse", "context"):
                if name != "context" or params.get(name) is not None:
                    params[name] = self._array_param(params.get(name), name, uploads)
            params["window"] = _window(params.get("window"))
            params["options"] = {k: params.pop(k) for k in ("seed", "steps") if k in params}
        elif kind in ("assist", "auto"):
            params = dict(params)
            params["volume"] = self._array_param(params.get("volume"), "volume", uploads)
            params["window"] = _window(params.get("window"))
            if kind == "assist":
                arrays["masks"] = np.asarray(params.pop("masks")).astype(bool) if params.get("masks") is not None \
                    else None
                params["options"] = {k: (list(v) if k == "kinds" else v) for k in ("kinds", "steps", "seed", "lr", "batch")
                                     if (v := params.pop(k, None)) is not None}
            else:
                if "class_name" in params:   # `class` is a Python keyword: class_name= is the spelling for callers
                    params["class"] = params.pop("class_name")
                data = params.pop("ppn_bytes", None)
                if data is not None:
                    arrays["ppn"] = np.frombuffer(bytes(data), np.uint8)
            if params.get("slices") is not None:
                params["slices"] = [int(i) for i in params["slices"]]
        elif kind == "track":
            tracker = params.get("tracker")
            params = {**params, "tracker": getattr(tracker, "id", tracker)}
        return RemoteJob(self, None, kind, pending=(params, arrays, uploads))

    def _array_param(self, value, what: str, uploads: dict) -> str:
        """A content id as it is, or an array to send first: its upload is kept under the parameter's name
        (the parameter becomes that upload's id once it is done)."""
        if isinstance(value, str):
            return value
        if value is None:
            raise SonoSAMError(f"Give the {what} (a numpy array).")
        uploads[what] = ArrayUpload(self, np.asarray(value), what=what)
        return what

    def _propagate_params(self, params: dict, arrays: dict, uploads: dict) -> dict:
        params = dict(params)
        out = {"volume": self._array_param(params.pop("volume", None), "volume", uploads),
               "axis": params.pop("axis", 0)}
        previous = params.pop("previous", None)
        out["previous"] = getattr(previous, "job_id", previous)
        if params.get("assist") is not None:
            out["assist"] = params.pop("assist")
        seeds = []
        for n, seed in enumerate(params.pop("seeds", None) or []):
            entry = dict(seed) if isinstance(seed, dict) else {k: getattr(seed, k) for k in
                                                               ("index", "box", "points", "labels", "mask")}
            if entry.get("mask") is not None:
                arrays[f"seed{n}"] = np.asarray(entry["mask"]).astype(bool)
                entry["mask"] = f"seed{n}"
            seeds.append({k: _listed(v) if k in ("box", "points", "labels") else v for k, v in entry.items()
                          if v is not None})
        out["seeds"] = seeds
        params.pop("volume_id", None)  # the server names volumes by content
        if "window" in params:
            params["window"] = _window(params["window"])
        out["options"] = params
        return out

    def propagate(self, volume, seeds, axis=0, *, previous=None, progress=None, cancel=None, poll: float = 0.1,
                  **options) -> "RemotePropagationResult":
        """sonosam.volume.propagate on the server, waiting here: progress(done, total, message) while it runs,
        `cancel` (threading.Event or callable) cancels it (then JobCancelledError: nothing to write)."""
        job = self.start_job("propagate", volume=volume, seeds=seeds, axis=axis, previous=previous, **options)
        return job.result(on_progress=progress, cancel=cancel, interval=poll)

    def tracker(self, frames, *, pause: bool = True, frames_id: str | None = None, **options) -> "RemoteTracker":
        """A cine tracker (sonosam.track.Tracker) living on the server, for (T, H, W) frames. `frames_id`:
        their content id when they were sent already (begin_upload: a GUI sends them from its timer)."""
        frames = np.asarray(frames)
        frames_id = frames_id or self.upload(frames)
        body = {"frames": frames_id, "options": options, "pause": pause}
        try:
            answer = self._request("POST", "/v1/trackers", body, context="creating a tracker")
        except ServerError as error:
            if error.code != "unknown_array":
                raise
            self._sent.discard(frames_id)   # the server dropped them (evicted, or restarted): send them again, once
            self.upload(frames, array_id=frames_id)
            answer = self._request("POST", "/v1/trackers", body, context="creating a tracker")
        return RemoteTracker(self, answer["id"], frames.shape)


def _hashable(key):
    if isinstance(key, (list, tuple)):
        return tuple(_hashable(k) for k in key)
    return key


def _listed(value):
    if value is None:
        return None
    return np.asarray(value).tolist()


def _window(window):
    return None if window is None else [float(window[0]), float(window[1])]


class ArrayUpload:
    """One array sent in chunks, a small step per call, so that a GUI timer can drive it without holding its
    thread (a 512 x 512 x 300 CT is 150 MB; a remote host is slower than loopback):

        upload = client.begin_upload(volume)            # nothing happens yet
        ... each timer tick: if upload.step(): use upload.id

    Steps: hash the canonical bytes piece by piece (the content id); ask the server (an array it holds costs
    nothing more; an unfinished upload of the same array is resumed where it stopped); send the chunks in
    order, each a request of at most UPLOAD_CHUNK_BYTES; finish (the server checks the hash, then stores).
    A step works for about `budget` seconds (at least one unit). A failed step raises; calling step() again
    resumes from what the server has (GET /v1/uploads/ID), or starts again when the server lost the upload."""

    def __init__(self, client: SonoSAMClient, array: np.ndarray, geometry: dict | None = None, *,
                 array_id: str | None = None, what: str = "array", chunk_bytes: int | None = None):
        self.client, self.array, self.geometry, self.what = client, np.asarray(array), geometry, what
        if self.array.dtype.name not in wire.DTYPES:
            raise wire.WireError(f"The {what} has dtype {self.array.dtype}, which cannot be sent; use one of "
                                 f"{', '.join(wire.DTYPES)}.")
        self.nbytes = int(self.array.size) * self.array.dtype.itemsize
        self.chunk_bytes = int(chunk_bytes or UPLOAD_CHUNK_BYTES)
        self.id = array_id
        self.phase = "asking" if array_id else "hashing"   # -> asking -> sending -> finishing -> done
        self.hashed = self.sent_bytes = 0
        if array_id is not None and array_id in client._sent:   # the server holds it (resend() if it dropped it)
            self.phase, self.sent_bytes = "done", self.nbytes
        self.upload_id: str | None = None
        self._chunked = False
        self._deadline: float | None = None   # this step's requests end by then (a GUI poll's timeout)
        self._hasher = None if array_id else wire.content_hasher(self.array.dtype.name, self.array.shape)
        self._pieces = None if array_id else self._chunks(0)

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def message(self) -> str:
        mib = f"{self.nbytes / 2**20:.0f} MiB"
        if self.phase == "hashing":
            return f"checking {self.hashed / 2**20:.0f}/{mib}"
        if self.phase in ("sending", "finishing"):
            return f"{self.sent_bytes / 2**20:.0f}/{mib} sent"
        return {"asking": "asking the server", "done": f"{mib} on the server", "cancelled": "cancelled"}.get(
            self.phase, self.phase)

    def _chunks(self, start: int):
        """(offset, bytes) pieces of at most chunk_bytes from byte `start` on."""
        for offset, data in wire.canonical_pieces(self.array, self.chunk_bytes):
            for at in range(0, len(data), self.chunk_bytes):
                if offset + at + min(self.chunk_bytes, len(data) - at) <= start:
                    continue
                lo = max(at, start - offset)
                yield offset + lo, data[lo:at + self.chunk_bytes]

    def step(self, budget: float = GUI_STEP_SECONDS, timeout: float | None = None) -> bool:
        """Work for about `budget` seconds (at least one unit: one piece hashed, one request); True when done.
        `timeout`: seconds this step's requests may take together (a GUI poll's; a late answer raises
        ServerTimeoutError, and the next step asks the server where the upload stands and carries on)."""
        self._deadline = None if timeout is None else time.monotonic() + timeout
        deadline = time.perf_counter() + budget
        while self.phase not in ("done", "cancelled"):
            self._unit()
            if time.perf_counter() >= deadline:
                break
        return self.done

    def _unit(self) -> None:
        client = self.client
        if self.phase == "hashing":
            piece = next(self._pieces, None)
            if piece is not None:
                self._hasher.update(piece[1])
                self.hashed += len(piece[1])
                return
            self.id, self._pieces = self._hasher.hexdigest(), None
            self.phase = "done" if self.id in client._sent else "asking"
        elif self.phase == "asking":
            if self.nbytes <= self.chunk_bytes and not self._chunked:   # one chunk's worth: one request
                try:
                    client._request("PUT", f"/v1/arrays/{self.id}", {"geometry": self.geometry},
                                    {"array": self.array}, context=f"sending the {self.what}", timeout=self._timeout)
                except ServerTimeoutError:
                    self._smaller_chunks()   # the link cannot carry it within a GUI's limit: in smaller chunks then
                    raise
                except ServerError as error:
                    if error.code != "too_large":   # a server with a smaller request limit: in chunks then
                        raise
                    self._chunked = True
                    return
                client._sent.add(self.id)
                self.sent_bytes, self.phase = self.nbytes, "done"
                return
            answer = client._request("POST", "/v1/uploads", {"id": self.id, "dtype": self.array.dtype.name,
                                                             "shape": list(self.array.shape), "geometry": self.geometry},
                                     context=f"sending the {self.what}", timeout=self._timeout)
            if answer["stored"]:
                client._sent.add(self.id)
                self.sent_bytes, self.phase = self.nbytes, "done"
                return
            self.chunk_bytes = max(1, min(self.chunk_bytes, int(answer["max_chunk_bytes"])))
            self._resume(answer)
        elif self.phase == "sending":
            piece = next(self._pieces, None)
            if piece is None:
                self.phase = "finishing"
                return
            offset, data = piece
            try:
                answer = client._request("PUT", f"/v1/uploads/{self.upload_id}?offset={offset}", body=data,
                                         content_type="application/octet-stream", context=f"sending the {self.what}",
                                         timeout=self._timeout)
            except ServerTimeoutError:   # late: this chunk may or may not have landed; smaller ones from here
                self.phase = "resync"
                self._smaller_chunks()
                raise
            except ServerError as error:
                self._recover(error)
                return
            except BaseException:
                self.phase = "resync"   # this chunk may or may not have landed: ask the server on the next step
                raise
            self.sent_bytes = int(answer["received"])
        elif self.phase == "resync":
            try:
                self._resume(client._request("GET", f"/v1/uploads/{self.upload_id}", context=f"sending the {self.what}",
                                             timeout=self._timeout))
            except ServerError as error:
                if error.code != "unknown_upload":
                    raise
                self.phase = "asking"
        elif self.phase == "finishing":
            try:
                client._request("POST", f"/v1/uploads/{self.upload_id}/finish", context=f"sending the {self.what}",
                                timeout=self._timeout)
            except ServerError as error:
                if error.code == "bad_content_id":
                    self.phase = "failed"
                    raise
                self._recover(error)
                return
            client._sent.add(self.id)
            self.phase = "done"
        elif self.phase == "failed":
            raise ServerError(f"Sending the {self.what} failed; start a new upload.", 400, "upload_failed")

    def _smaller_chunks(self) -> None:
        """After a late request with data: halve the chunks (not below MIN_CHUNK_BYTES) and send in chunks, so that a
        slow uplink still finishes within a GUI's time limit per request."""
        self._chunked = True
        self.chunk_bytes = max(MIN_CHUNK_BYTES, min(self.chunk_bytes, self.nbytes) // 2)

    @property
    def _timeout(self) -> float | None:
        return None if self._deadline is None else max(0.001, self._deadline - time.monotonic())

    def _resume(self, status: dict) -> None:
        self.upload_id = status["upload"]
        self.sent_bytes = int(status["received"])
        self._pieces = self._chunks(self.sent_bytes)
        self.phase = "sending"

    def _recover(self, error: ServerError) -> None:
        """After a refused chunk or finish: carry on from what the server holds, or start again."""
        if error.code == "unknown_upload":
            self.phase = "asking"
            return
        if error.code not in ("upload_offset", "upload_incomplete", "upload_busy"):
            raise error
        self._resume(self.client._request("GET", f"/v1/uploads/{self.upload_id}", context=f"sending the {self.what}",
                                          timeout=self._timeout))

    def resend(self) -> None:
        """The server no longer holds the array (evicted from its store, or restarted): send it again."""
        self.client._sent.discard(self.id)
        self.phase, self.sent_bytes, self.upload_id, self._chunked = "asking", 0, None, False

    def cancel(self) -> None:
        """Stop; the server drops what it received of this upload (best effort: it expires anyway)."""
        if self.upload_id is not None and self.phase in ("sending", "finishing"):
            try:
                self.client._request("DELETE", f"/v1/uploads/{self.upload_id}", timeout=GUI_POLL_SECONDS)
            except (ServerError, ServerUnavailableError):
                pass
        if not self.done:
            self.phase = "cancelled"


class RemoteJob:
    """A job on the server. poll() -> status dict; cancel(); wait(); result() (waits, then decodes).

    A job from `prepare_job` starts with id None and its arrays still here: until it starts, each poll
    sends a step of them (state "sending", progress [MiB sent, MiB in all]) and then starts it."""

    def __init__(self, client: SonoSAMClient, job_id: str | None, kind: str, pending: tuple | None = None):
        self.client, self.id, self.kind = client, job_id, kind
        self._pending = pending          # (params, job arrays, {parameter: ArrayUpload}) until started
        self._request_id = secrets.token_hex(16)   # a start re-sent after a late answer names the same job
        self._resent = False                        # its arrays were sent again once, after the server lost one
        self.last: dict = {"state": "queued", "progress": [0, 0], "message": ""}

    def _context(self) -> str:
        job = (self.id or "not started")[:8]
        return f"while its {self.kind} job {job} was running"

    @property
    def started(self) -> bool:
        return self._pending is None

    def _send_step(self, budget: float, timeout: float | None = None) -> dict:
        """One step of the arrays' upload (or the start request once they are all there)."""
        params, arrays, uploads = self._pending
        for name, upload in uploads.items():
            if not upload.done:
                try:
                    upload.step(budget, timeout)
                finally:   # a late answer too reports where the sending stands
                    done = sum(u.sent_bytes for u in uploads.values()) / 2**20
                    total = sum(u.nbytes for u in uploads.values()) / 2**20
                    self.last = {"state": "sending", "progress": [int(done), max(1, int(math.ceil(total)))],
                                 "message": f"sending the {upload.what}: {upload.message}", "error": None}
                return self.last
        params = {k: uploads[k].id if k in uploads else [uploads[x].id if isinstance(x, str) and x in uploads else x
                                                         for x in v] if k == "images" else v
                  for k, v in params.items()}
        try:
            status = self.client._request("POST", "/v1/jobs", {"kind": self.kind, "params": params,
                                                               "request": self._request_id}, arrays,
                                          context=f"starting a {self.kind} job", timeout=timeout)
        except ServerError as error:
            # the server dropped an array it had (evicted by other uploads, or restarted): the next steps send
            # them again (it answers at once for those it still holds), then start; once
            if error.code != "unknown_array" or self._resent or not uploads:
                raise
            self._resent = True
            for upload in uploads.values():
                upload.resend()
            return self.last
        self.id, self._pending, self.last = status["id"], None, status
        return status

    def start(self) -> "RemoteJob":
        """Send what is left of its arrays and start it now (waits for the uploads: for scripts)."""
        while self._pending is not None:
            if self.last.get("state") == "cancelled":
                raise JobCancelledError(f"The {self.kind} job was cancelled before it started.")
            self._send_step(1.0)
        return self

    def poll(self, timeout: float | None = None) -> dict:
        """{"state": queued|running|done|failed|cancelled, "progress": [done, total], "message", "error"}.
        With `timeout` (seconds; for a GUI timer), an answer later than that returns the last status with
        "late": True instead of waiting: a busy server never holds the caller longer. Before a prepared
        job starts, a poll sends a step of its arrays (about GUI_STEP_SECONDS) and says "sending"."""
        if self._pending is not None:
            if self.last.get("state") == "cancelled":
                return self.last
            # late: the next poll asks where the upload (or start) stands; a step may take what sending takes
            send = None if timeout is None else max(timeout, GUI_SEND_SECONDS)
            return self._unless_late(lambda: self._send_step(
                GUI_STEP_SECONDS if timeout is None else min(timeout, GUI_STEP_SECONDS), send), send)
        return self._unless_late(lambda: self._status("GET", "", timeout), timeout)

    def _status(self, method: str, action: str, timeout: float | None) -> dict:
        self.last = self.client._request(method, f"/v1/jobs/{self.id}{action}", context=self._context(),
                                         timeout=timeout)
        return self.last

    def _unless_late(self, call, timeout: float | None) -> dict:
        """call() -> status; with a GUI's ``timeout``, a late answer gives the last status marked "late" instead
        (without one, it raises ServerTimeoutError)."""
        try:
            return call()
        except ServerTimeoutError:
            if timeout is None:
                raise
            return {**self.last, "late": True}

    @property
    def state(self) -> str:
        return self.last["state"]

    @property
    def done(self) -> bool:
        return self.poll()["state"] in FINISHED

    def cancel(self, timeout: float | None = None) -> dict:
        """Ask the server to stop after the current step; a cancelled job keeps no result. Before it started:
        its uploads stop (the server drops the unfinished one) and it never starts. With ``timeout`` (a GUI's), a
        busy or hung server's late answer returns the last status with "late": True instead of holding the caller."""
        if self._pending is not None:
            for upload in self._pending[2].values():
                upload.cancel()
            self.last = {"state": "cancelled", "progress": [0, 0], "error": None,
                         "message": "cancelled before it started; nothing was sent to run"}
            return self.last
        return self._unless_late(lambda: self._status("POST", "/cancel", timeout), timeout)

    def wait(self, timeout: float | None = None, interval: float = 0.1, on_progress=None, cancel=None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if on_progress is not None and status["progress"][1]:
                on_progress(status["progress"][0], status["progress"][1], status.get("message", ""))
            if status["state"] in FINISHED:
                return status
            if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
                self.cancel()
                cancel = None
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The {self.kind} job is still {status['state']} after {timeout:g} s.")
            if self._pending is None:   # while sending, the next step follows at once
                time.sleep(interval)

    def result(self, timeout: float | None = None, interval: float = 0.1, on_progress=None, cancel=None):
        """Wait for the job, then its result: RemotePropagationResult (propagate), dict (evaluate: table and
        result; encode), the tracker's RunReport-like dict (track). Raises JobCancelledError when cancelled,
        the job's own error class when it failed."""
        status = self.wait(timeout, interval, on_progress, cancel)
        if status["state"] == "cancelled" and self._pending is not None:
            raise JobCancelledError(f"The {self.kind} job was cancelled before it started: nothing was written.")
        if status["state"] == "cancelled":
            raise JobCancelledError(f"The {self.kind} job was cancelled: it has no result and nothing was written.")
        if status["state"] == "failed":
            _raise_for(409, status.get("error") or {}, f"The {self.kind} job failed")
        meta, arrays = self.client._request("GET", f"/v1/jobs/{self.id}/result", context=self._context())
        if self.kind == "propagate":
            return RemotePropagationResult.from_wire(meta, arrays, self.id)
        if self.kind in ("track", "refine", "auto"):
            return meta, arrays
        return meta


class RemotePrefetchJob:
    """The in-process PrefetchJob's face on a server encode job: done, done_count, total, cancel(), wait()."""

    def __init__(self, job: RemoteJob, total: int, on_progress=None):
        self.job, self.total, self.on_progress = job, total, on_progress
        self.done_count = 0
        self._cancelled = False

    poll_timeout = GUI_POLL_SECONDS  # `done` is read from GUI timers: a busy server's late answer counts as "not yet"

    def _update(self) -> dict:
        status = self.job.poll(timeout=self.poll_timeout)
        if not self.job.started:   # still sending its images (progress in MiB)
            return status
        count = status["progress"][0]
        if count != self.done_count and self.on_progress is not None:
            self.on_progress(count, self.total)
        self.done_count = count
        return status

    @property
    def done(self) -> bool:
        return self._update()["state"] in FINISHED

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        self._cancelled = True
        self.job.cancel(timeout=self.poll_timeout)   # a GUI's: a late answer still lands

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the job (``timeout=0``: not at all, the last status polled; a GUI asks so after ``done``), and
        raise its error if it failed."""
        if timeout == 0:
            status = self.job.last
        else:
            status = self.job.wait(timeout, interval=0.05)
            self._update()
        if status["state"] == "failed":
            _raise_for(409, status.get("error") or {}, "Encoding ahead failed")


@dataclass
class RemotePropagationResult:
    """sonosam.volume.PropagationResult's fields, from the server: mask (volume-shaped bool), axis, slices
    {index: SimpleNamespace(index, status, score, area, reason, source)}, anchors (indices), carrier, replaced,
    added, summary().
    Pass it as `previous=` to a later propagate job: the server keeps the full result under `job_id`."""
    mask: np.ndarray
    axis: int
    slices: dict
    anchors: list
    job_id: str
    seconds: float = 0.0
    encoder_calls: int = 0
    decoded: int = 0
    cancelled: bool = False
    _summary: str = ""
    carrier: str | None = None
    replaced: list = field(default_factory=list)
    added: list = field(default_factory=list)

    @classmethod
    def from_wire(cls, meta: dict, arrays: dict, job_id: str) -> "RemotePropagationResult":
        slices = {int(i): types.SimpleNamespace(**info) for i, info in meta["slices"].items()}
        return cls(np.array(arrays["mask"]), int(meta["axis"]), slices, [int(i) for i in meta["anchors"]], job_id,
                   float(meta["seconds"]), int(meta["encoder_calls"]), int(meta["decoded"]), False, meta["summary"],
                   meta.get("carrier"), [int(i) for i in meta.get("replaced", [])],
                   [int(i) for i in meta.get("added", [])])

    def slice_mask(self, index: int) -> np.ndarray:
        return np.take(self.mask, index, axis=self.axis)

    def status(self, index: int) -> str:
        info = self.slices.get(index)
        return info.status if info else ""

    def summary(self) -> str:
        return self._summary


class RemoteTracker:
    """sonosam.track.Tracker on the server: add_object/correct/accept here, run() as a server job (polled),
    and after each call the results mirrored here: masks(name), labelmap(), confidences(), pending(),
    events, next_attention()."""

    def __init__(self, client: SonoSAMClient, tracker_id: str, shape: tuple):
        self.client, self.id, self.shape = client, tracker_id, tuple(shape)
        self.names: list[str] = []
        self.events: list[dict] = []
        self.threshold = None
        self._objects: dict = {}
        self._masks = np.zeros((0,) + self.shape, bool)
        self._confidences = np.zeros((self.shape[0], 0))

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    def _call(self, action: str, meta: dict, arrays: dict | None = None):
        return self.client._request("POST", f"/v1/trackers/{self.id}/{action}", meta, arrays,
                                    context=f"calling the tracker ({action})")

    def _prompt_meta(self, frame, name, box, points, labels) -> dict:
        return {"frame": int(frame), "name": name,
                "prompts": {"box": _listed(box), "points": _listed(points), "labels": _listed(labels)}}

    def add_object(self, name: str, frame: int, mask=None, box=None, points=None, labels=None,
                   threshold: float | None = None) -> np.ndarray:
        meta = {**self._prompt_meta(frame, name, box, points, labels), "threshold": threshold}
        _, arrays = self._call("add_object", meta, {"mask": None if mask is None else np.asarray(mask).astype(bool)})
        self.refresh()
        return arrays["mask"]

    def correct(self, frame: int, name: str, mask=None, box=None, points=None, labels=None) -> np.ndarray:
        _, arrays = self._call("correct", self._prompt_meta(frame, name, box, points, labels),
                               {"mask": None if mask is None else np.asarray(mask).astype(bool)})
        self.refresh()
        return arrays["mask"]

    def accept(self, frame: int, name: str) -> None:
        self._call("accept", {"frame": int(frame), "name": name})
        self.refresh()

    def close(self, timeout: float | None = None) -> None:
        """Free the tracker on the server (it holds the loop's frames); its results mirrored here stay. With
        ``timeout`` (a GUI's), a busy or hung server is not waited for (it drops old trackers itself)."""
        try:
            self.client._request("DELETE", f"/v1/trackers/{self.id}", context="closing a tracker", timeout=timeout)
        except ServerTimeoutError:
            if timeout is None:
                raise
        except ServerError as error:
            if error.code != "unknown_tracker":
                raise

    def start(self, rerun: bool = False) -> RemoteJob:
        """Run (or re-run) the tracker as a server job; poll it, then call finish(job)."""
        return self.client.start_job("track", tracker=self.id, rerun=rerun)

    def finish(self, job: RemoteJob, **wait) -> dict:
        """The finished job's report {paused, frame, processed, events}; mirrors the results here."""
        meta, arrays = job.result(**wait)
        self._mirror(meta, arrays)
        return meta["report"]

    def run(self, on_progress=None, cancel=None) -> dict:
        job = self.start()
        progress = None if on_progress is None else (lambda d, t, m: on_progress(d, t))
        return self.finish(job, on_progress=progress, cancel=cancel)

    def refresh(self) -> None:
        self._mirror(*self._call("state", {}))

    def _mirror(self, meta: dict, arrays: dict) -> None:
        self.names, self.events, self.threshold = meta["names"], meta["events"], meta["threshold"]
        self._objects = meta["objects"]
        self._masks, self._confidences = np.array(arrays["masks"]), np.array(arrays["confidences"])

    def masks(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise SonoSAMError(f"No tracked object {name!r}; tracked: {', '.join(self.names) or 'none'}.")
        return self._masks[self.names.index(name)]

    def labelmap(self) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8)
        for label, name in enumerate(self.names, start=1):
            out[self.masks(name)] = label
        return out

    def confidences(self) -> np.ndarray:
        return self._confidences

    def sources(self, name: str) -> list:
        return self._objects[name]["sources"]

    def pending(self) -> list[dict]:
        return [e for e in self.events if e["status"] == "pending"]

    def next_attention(self, after: int = -1) -> int | None:
        for t in range(after + 1, self.n_frames):
            for j, name in enumerate(self.names):
                threshold = self._objects[name]["threshold"]
                threshold = self.threshold if threshold is None else threshold
                conf = self._confidences[t, j]
                if self.sources(name)[t] not in (None, "keyframe") and threshold > 0 and conf <= threshold:
                    return t
        return None


# -------------------------------------------------------------------------------------------- local server
class LocalServer:
    """A `python -m sonosam serve` child process on 127.0.0.1 (see start_local_server)."""

    def __init__(self, process: subprocess.Popen, token: str, command: list[str]):
        self.process, self.token, self.command = process, token, command
        self.url: str | None = None
        self.ready_info: dict | None = None
        self._log = collections.deque(maxlen=200)   # the server's stderr, last lines
        self._ready = threading.Event()
        threading.Thread(target=self._read_stdout, name="sonosam-server-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name="sonosam-server-stderr", daemon=True).start()

    def _read_stdout(self) -> None:
        for line in iter(self.process.stdout.readline, b""):
            text = line.decode(errors="replace").strip()
            if not self._ready.is_set():
                try:
                    info = json.loads(text)
                except ValueError:
                    info = None
                if isinstance(info, dict) and "url" in info:
                    self.ready_info, self.url = info, info["url"]
                    self._ready.set()
                    continue
            self._log.append(text)
        self._ready.set()  # EOF: wake up waiters (they see the exit)

    def _read_stderr(self) -> None:
        for line in iter(self.process.stderr.readline, b""):
            self._log.append(line.decode(errors="replace").rstrip())

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        tail = [line for line in list(self._log) if line][-lines:]
        return " | ".join(tail)

    def describe(self) -> str:
        """What became of the process, for error messages."""
        code = self.process.poll()
        if code is None:
            tail = self.log_tail(3)
            return f"its process (pid {self.process.pid}) is still running but does not answer" + \
                (f"; last log: {tail}" if tail else "")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = self.log_tail(3)
        return f"its process (pid {self.process.pid}) {how}" + (f"; last log: {tail}" if tail else "")

    def is_ready(self) -> bool:
        """Non-blocking (for a GUI timer): True once ready; raises ServerUnavailableError if it died first."""
        if self.url is not None:
            return True
        if self.process.poll() is not None:
            self._ready.wait(2)  # let the readers drain the last lines
            raise ServerUnavailableError(f"`sonosam serve` stopped before it was ready: {self.describe()}.")
        return False

    def wait_ready(self, timeout: float = 300) -> "LocalServer":
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                self.stop()
                raise ServerUnavailableError(f"`sonosam serve` was not ready within {timeout:g} s; "
                                             f"last log: {self.log_tail(3) or '(none)'}.")
            self._ready.wait(0.1)
        return self

    def client(self, **kwargs) -> SonoSAMClient:
        self.wait_ready()
        return SonoSAMClient(self.url, self.token, server=self, **kwargs)

    def stop(self, timeout: float = 10) -> int | None:
        """Close its stdin (it exits on EOF), then stop it and what it started (`sonosam.processes.stop_tree`: with
        Slicer's PythonSlicer launcher the server is the launcher's child). Returns the exit code."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout / 2)
            except subprocess.TimeoutExpired:
                stop_tree(self.process, timeout / 4)
        return self.process.returncode

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_server(python: str | None = None, model: str = "litemedsam", *, args: Iterable[str] = (),
                       backend: str | None = None, device: str | None = None, env: dict | None = None,
                       timeout: float = 300, wait: bool = True) -> LocalServer:
    """Start `python -m sonosam serve` on 127.0.0.1 with a free port and a fresh random token (handed over in the
    environment, not on the command line), stopping with this process (stdin EOF). `python`: the interpreter
    with the core and torch installed (default: this one); the child imports the same `sonosam` as this
    process. `wait=False` returns at once: poll server.is_ready() from a GUI timer."""
    python = python or sys.executable
    token = secrets.token_urlsafe(32)
    command = [python, "-m", "sonosam"]
    if backend:
        command += ["--backend", backend]
    if device:
        command += ["--device", device]
    command += ["serve", "--host", "127.0.0.1", "--port", "0", "--model", model, "--exit-on-stdin-eof", *args]
    child_env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, child_env.get("PYTHONPATH")]))
    child_env.update(env or {})
    child_env[TOKEN_ENV] = token
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
    try:   # its own process group: stop() then reaches a launcher's child (PythonSlicer's real Python)
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=child_env, creationflags=flags, **own_group())
    except OSError as error:
        raise ServerUnavailableError(f"Cannot start {python} -m sonosam serve: {error}.") from None
    server = LocalServer(process, token, command)
    return server.wait_ready(timeout) if wait else server
