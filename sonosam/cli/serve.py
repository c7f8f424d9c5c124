"""`sonosam serve`: the inference server (see sonosam/server/__init__.py and docs/slicer.md)."""

from __future__ import annotations

from . import float_in, int_at_least


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the inference server (HTTP; Slicer starts one itself, or run it on a GPU host)",
        description="Serve the model over HTTP for the Slicer modules and sonosam.client. Prints one JSON line "
                    "{url, token, ...} on stdout when ready. Loopback with a random token by default; any other "
                    "address needs --token-file (and preferably --tls-cert/--tls-key).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int_at_least(0, 65535), default=0, help="port (default 0: a free one, shown in the ready line)")
    parser.add_argument("--token", help="the clients' token (prefer --token-file: the command line is visible to others)")
    parser.add_argument("--token-file", help="file holding the token (at least 16 characters)")
    parser.add_argument("--model", default="litemedsam", help="model name (see `sonosam models`) or a checkpoint path (default: %(default)s)")
    parser.add_argument("--checkpoint", help="weights file for --model (default: bundled or cached)")
    parser.add_argument("--cache-dir", help="the only folder the server writes to (default: $SONOSAM_HOME or "
                                            "~/.cache/sonosam): weights, ONNX graphs, spilled embeddings")
    parser.add_argument("--cache-mib", type=float_in(0), default=2048, help="embedding cache budget shared by all clients (MiB)")
    parser.add_argument("--spill", action="store_true", help="embeddings evicted from memory go to disk (cache folder)")
    parser.add_argument("--store-mib", type=float_in(0, low_open=True), default=2048, help="budget for uploaded images/volumes (MiB)")
    parser.add_argument("--max-request-mib", type=float_in(0, low_open=True), default=1024, help="largest request body accepted (MiB)")
    parser.add_argument("--jobs", type=int_at_least(1), default=2, help="long jobs (propagate, track, evaluate) run at once")
    parser.add_argument("--threads", type=int_at_least(1), help="torch CPU threads (default: torch's)")
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="stop when stdin closes (a parent such as Slicer exited); start_local_server sets it")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..server import serve

    serve(host=args.host, port=args.port, token=args.token, token_file=args.token_file, model=args.model,
          checkpoint=args.checkpoint, device=args.device, backend=args.backend, cache_dir=args.cache_dir,
          cache_mib=args.cache_mib, spill=args.spill, store_mib=args.store_mib, max_request_mib=args.max_request_mib,
          job_workers=args.jobs, tls_cert=args.tls_cert, tls_key=args.tls_key, threads=args.threads,
          exit_on_stdin_eof=args.exit_on_stdin_eof, log_level=args.log_level)
    # Shut down cleanly above (jobs cancelled, spilled embeddings removed); skip the interpreter's teardown of
    # torch's thread pools, which took ~5 s here and would keep the port's owner alive after its parent left.
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
