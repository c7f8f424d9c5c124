"""HTTP routes of `sonosam serve` (FastAPI): token check, request size limit, wire decoding, and the
mapping of refusals to status codes with a JSON body {"error", "type", "message"} that names the problem.

Routes (all under /v1 need the token as `Authorization: Bearer TOKEN`; bodies are sonosam.wire messages):

    GET  /healthz                        liveness, no token (for load balancers)
    GET  /v1/info                        model, prompt kinds, device, cache and store use
    PUT  /v1/arrays/{content_id}         upload one array (+ meta.geometry); the id is checked against the bytes
    GET  /v1/arrays/{content_id}         a stored array back (meta.geometry)
    POST /v1/arrays/missing              meta.ids -> which of them the server does not hold
    POST /v1/uploads                     meta.id (content id), dtype, shape (+geometry) -> {upload, received,
                                         stored}: a chunked upload (stored: true = the server holds it already;
                                         the same id again resumes an unfinished one)
    PUT  /v1/uploads/{id}?offset=N       one chunk, raw bytes (application/octet-stream), in order
    GET  /v1/uploads/{id}                {received, nbytes}: where to resume
    POST /v1/uploads/{id}/finish         the hash is checked, then the array is stored (400 and nothing kept
                                         when it does not match the id)
    DELETE /v1/uploads/{id}
    POST /v1/embed                       meta.image (+window): encode now into the shared cache
    POST /v1/cached                      meta.ids (+window) -> whether each is encoded
    POST /v1/predict                     meta.image, prompts, multimask, window, assist (+ array mask_logits) -> masks
    POST /v1/jobs                        meta.kind (encode|propagate|evaluate|track|refine|assist|auto), params (+ arrays)
    GET  /v1/jobs/{id}                   status: state, progress [done, total], message, error
    POST /v1/jobs/{id}/cancel            stop after the current step; a cancelled job keeps no result
    GET  /v1/jobs/{id}/result            the result (409 while running, or when failed/cancelled)
    DELETE /v1/jobs/{id}
    POST /v1/trackers                    meta.frames (+options, pause) -> a tracker session
    POST /v1/trackers/{id}/{action}      add_object | correct | accept | state
    DELETE /v1/trackers/{id}
"""

from __future__ import annotations

import hmac
import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__, wire
from ..errors import SonoSAMError
from .service import ApiError, Service, _error_type

log = logging.getLogger("sonosam.server")


def create_app(service: Service, token: str, max_request_bytes: int) -> FastAPI:
    expected = token.encode()

    async def check_token(request: Request) -> None:  # async: a sync dependency would hop to the threadpool
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not given:
            raise ApiError(401, "no_token", "This server needs its token: send 'Authorization: Bearer TOKEN' "
                           "(the token is printed by `sonosam serve` when it starts, or set with --token-file).")
        if not hmac.compare_digest(given.encode(), expected):
            raise ApiError(401, "bad_token", "Wrong token for this server: copy it again from where the server "
                           "was started (--token-file or its ready line).")

    app = FastAPI(title="SonoSAM", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    auth = [Depends(check_token)]

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse({"error": error.code, "type": "ApiError", "message": str(error)}, error.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, error: RequestValidationError):
        # FastAPI's own check of the URL's parameters (e.g. ?offset=abc): the server's error shape, one line
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors())
        return JSONResponse({"error": "bad_value", "type": "ApiError", "message": f"Bad request: {problems}."}, 400)

    @app.exception_handler(SonoSAMError)
    async def core_error(request: Request, error: SonoSAMError):
        if isinstance(error, wire.WireError):  # the message itself is malformed: a protocol error
            return JSONResponse({"error": "bad_message", "type": "ApiError", "message": str(error)}, 400)
        return JSONResponse({"error": "invalid_input", "type": _error_type(error), "message": str(error)}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "type": "ServerError",
                             "message": f"internal server error: {type(error).__name__}: {error}"}, 500)

    async def body(request: Request) -> tuple[dict, dict]:
        """The request's message, refused with 413 as soon as it passes the size limit."""
        length = request.headers.get("content-length")
        limit_text = f"the server's limit of {max_request_bytes / 2**20:.0f} MiB (sonosam serve --max-request-mib)"
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            raise ApiError(413, "too_large", f"A request of {length} bytes exceeds {limit_text}.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                raise ApiError(413, "too_large", f"The request exceeds {limit_text}.")
            chunks.append(chunk)
        return wire.decode(b"".join(chunks))

    def frame(meta: dict, arrays: dict | None = None) -> Response:
        return Response(wire.encode(meta, arrays), media_type=wire.CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/info", dependencies=auth)
    async def info():
        return {**service.info(), "version": __version__, "max_request_mib": max_request_bytes / 2**20}

    @app.put("/v1/arrays/{array_id}", dependencies=auth)
    async def put_array(array_id: str, request: Request):
        meta, arrays = await body(request)
        return await run_in_threadpool(service.put_array, array_id, meta, arrays)

    @app.get("/v1/arrays/{array_id}", dependencies=auth)
    async def get_array(array_id: str):
        array, geometry = service.store.entry(array_id)
        return frame({"geometry": geometry}, {"array": array})

    @app.post("/v1/uploads", dependencies=auth)
    async def begin_upload(request: Request):
        meta, _ = await body(request)
        return service.uploads.begin(meta)

    @app.get("/v1/uploads/{upload_id}", dependencies=auth)
    async def upload_status(upload_id: str):
        return service.uploads.get(upload_id).status()

    @app.put("/v1/uploads/{upload_id}", dependencies=auth)
    async def upload_chunk(upload_id: str, request: Request, offset: int = -1):
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise ApiError(411, "no_length", "A chunk needs its Content-Length.")
        length = int(length)
        upload = service.uploads.claim(upload_id, offset, length)
        try:
            # straight into the array's buffer: no copy of the whole body, nothing stored before finish
            view, at = memoryview(upload.buffer)[offset:offset + length], 0
            async for part in request.stream():
                if at + len(part) > length:
                    raise ApiError(400, "bad_chunk", f"The chunk is longer than its Content-Length ({length}).")
                view[at:at + len(part)] = part
                at += len(part)
            if at != length:
                raise ApiError(400, "bad_chunk", f"The chunk ended after {at} of its {length} bytes; send it again.")
            return await run_in_threadpool(service.uploads.hash_chunk, upload, length)
        finally:
            upload.lock.release()

    @app.post("/v1/uploads/{upload_id}/finish", dependencies=auth)
    async def finish_upload(upload_id: str):
        return await run_in_threadpool(service.uploads.finish, upload_id)

    @app.delete("/v1/uploads/{upload_id}", dependencies=auth)
    async def cancel_upload(upload_id: str):
        return service.uploads.cancel(upload_id)

    @app.post("/v1/arrays/missing", dependencies=auth)
    async def missing(request: Request):
        meta, _ = await body(request)
        return service.missing(meta)

    @app.post("/v1/embed", dependencies=auth)
    async def embed(request: Request):
        meta, _ = await body(request)
        return await run_in_threadpool(service.embed, meta)

    @app.post("/v1/cached", dependencies=auth)
    async def cached(request: Request):
        meta, _ = await body(request)
        return service.is_cached(meta)

    @app.post("/v1/predict", dependencies=auth)
    async def predict(request: Request):
        meta, arrays = await body(request)
        return frame(*await run_in_threadpool(service.predict, meta, arrays))

    @app.post("/v1/jobs", dependencies=auth)
    async def start_job(request: Request):
        meta, arrays = await body(request)
        return await run_in_threadpool(service.start_job, meta, arrays)

    @app.get("/v1/jobs/{job_id}", dependencies=auth)
    async def job_status(job_id: str):
        return service.job(job_id).status()

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=auth)
    async def cancel_job(job_id: str):
        return service.cancel_job(job_id)

    @app.get("/v1/jobs/{job_id}/result", dependencies=auth)
    async def job_result(job_id: str):
        return frame(*service.job_result(job_id))

    @app.delete("/v1/jobs/{job_id}", dependencies=auth)
    async def delete_job(job_id: str):
        return service.delete_job(job_id)

    @app.post("/v1/trackers", dependencies=auth)
    async def create_tracker(request: Request):
        meta, arrays = await body(request)
        return await run_in_threadpool(service.create_tracker, meta, arrays)

    @app.post("/v1/trackers/{tracker_id}/{action}", dependencies=auth)
    async def tracker_call(tracker_id: str, action: str, request: Request):
        meta, arrays = await body(request)
        return frame(*await run_in_threadpool(service.tracker_call, tracker_id, action, meta, arrays))

    @app.delete("/v1/trackers/{tracker_id}", dependencies=auth)
    async def delete_tracker(tracker_id: str):
        return service.delete_tracker(tracker_id)

    return app
