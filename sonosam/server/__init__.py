"""`sonosam serve`: the core behind HTTP, for Slicer (which starts one itself on 127.0.0.1) and for a
department's GPU host. See docs/slicer.md ("Process model") and sonosam/server/app.py for the routes.

When it is ready it prints one JSON line on stdout, {"url": ..., "token": ..., "model": ..., "pid": ...}
(token: the random one it made up, or null when it was given one);
everything else goes to stderr. It writes only under its cache folder (--cache-dir, default the sonosam
cache: $SONOSAM_HOME or ~/.cache/sonosam): downloaded weights, exported ONNX graphs, spilled embeddings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

from ..errors import SonoSAMError

TOKEN_ENV = "SONOSAM_SERVER_TOKEN"  # how start_local_server hands the token over (not on the command line)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, token_file: str | None, host: str) -> str:
    """--token, else --token-file, else $SONOSAM_SERVER_TOKEN, else (loopback only) a fresh random one."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8-sig").strip()   # a BOM: saved by an editor on Windows
        except OSError as error:
            raise SonoSAMError(f"Cannot read the token file {token_file}: {error.strerror}.") from None
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise SonoSAMError("The token is too short: use at least 16 random characters "
                           "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))').")
    if token is None:
        if not is_loopback(host):
            raise SonoSAMError(f"Listening on {host} makes the server reachable from other machines: give it a token "
                               "(--token-file FILE holding at least 16 random characters) and preferably TLS "
                               "(--tls-cert/--tls-key).")
        token = secrets.token_urlsafe(32)
    return token


def serve(*, host: str = "127.0.0.1", port: int = 0, token: str | None = None, token_file: str | None = None,
          model: str = "litemedsam", checkpoint: str | None = None, device: str | None = None,
          backend: str | None = "auto", cache_dir: str | None = None, cache_mib: float = 2048,
          spill: bool = False, store_mib: float = 2048, max_request_mib: float = 1024, job_workers: int = 2,
          tls_cert: str | None = None, tls_key: str | None = None, threads: int | None = None,
          exit_on_stdin_eof: bool = False, log_level: str = "warning") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    log = logging.getLogger("sonosam.server")
    if bool(tls_cert) != bool(tls_key):
        raise SonoSAMError("TLS needs both --tls-cert and --tls-key.")
    for path in filter(None, (tls_cert, tls_key)):
        if not Path(path).is_file():
            raise SonoSAMError(f"TLS file {path} does not exist.")
    generated = not (token or token_file or os.environ.get(TOKEN_ENV))
    token = resolve_token(token, token_file, host)
    if not is_loopback(host) and not tls_cert:
        log.warning("Listening on %s without TLS: the token and the images travel in clear text. Use --tls-cert/"
                    "--tls-key (or a TLS-terminating proxy) outside a trusted network.", host)
    # Everything this process writes goes under the cache folder: weights, ONNX graphs, spilled embeddings.
    if cache_dir:
        os.environ["SONOSAM_HOME"] = str(Path(cache_dir).resolve())
    import torch  # after SONOSAM_HOME is set

    from ..models import load_model, weights
    from ..predictor import Predictor
    from .app import create_app
    from .service import Service

    if threads:
        torch.set_num_threads(int(threads))
    root = weights.cache_dir().parent
    loaded = load_model(model, checkpoint=checkpoint, device=device, backend=backend)
    predictor = Predictor(loaded, cache_mib=cache_mib, spill=str(_mkdir(root / "server-spill")) if spill else False)
    service = Service(predictor, store_mib=store_mib, job_workers=job_workers,
                      max_chunk_bytes=int(max_request_mib * 2**20))
    log.info("imported the job code (propagation, tracking, evaluation, refiner, assist, auto) in %.2f s", service.warm_up())
    app = create_app(service, token, int(max_request_mib * 2**20))

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    if os.name == "posix":   # on Windows it would let a second server bind a port in use (socket.create_server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections (Linux)
    try:
        sock.bind((host, port))
    except OSError as error:
        raise SonoSAMError(f"Cannot listen on {host}:{port}: {error.strerror} (port in use? use --port 0 for a "
                           "free one).") from None
    sock.listen(128)
    sock.set_inheritable(True)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            timeout_keep_alive=60, timeout_graceful_shutdown=5, lifespan="off")
    server = uvicorn.Server(config)
    scheme = "https" if tls_cert else "http"
    shown_host = f"[{host}]" if ":" in host else host

    if exit_on_stdin_eof:  # the parent (e.g. Slicer) died or closed our stdin: shut down with it
        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            server.should_exit = True
        threading.Thread(target=watch_stdin, name="sonosam-stdin", daemon=True).start()

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            # the token only when we made it up (a given one is known to its owner and stays out of logs)
            print(json.dumps({"url": f"{scheme}://{shown_host}:{bound_port}", "token": token if generated else None, "model": loaded.spec.name,
                              "backend": loaded.backend, "device": str(loaded.device), "pid": os.getpid()}), flush=True)
        await task

    try:
        asyncio.run(main())
    finally:
        service.close()
        predictor.close()
        predictor.cache.clear()  # removes spilled embedding files


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
