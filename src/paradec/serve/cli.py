"""``paradec serve``: the OpenAI-compatible server as a subcommand (fastapi/uvicorn imported lazily)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import threading

from ..errors import ParadecError


def add_parser(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (completions, chat, streaming)",
        description="Serve one model over the OpenAI API: /v1/completions, /v1/chat/completions, /v1/models, /health. "
        'A request picks its method with the extra body field "paradec": {"method": NAME, "options": {...}}.',
    )
    add_model_args(p)
    p.add_argument(
        "--method", default="plain", help="default decoding method, see `paradec methods` (default: %(default)s)"
    )
    p.add_argument(
        "--draft", metavar="MODEL", help="draft model for the `draft` method (same kinds of spec as --model)"
    )
    p.add_argument("--method-options", metavar="JSON", help="options of the default method as a JSON object")
    p.add_argument(
        "--no-request-options",
        dest="request_options",
        action="store_false",
        help='refuse per-request method options ("paradec": {"options": ...}); requests may still pick a method',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("PARADEC_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $PARADEC_API_KEY)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests that may wait while one runs; more get 429 (default: %(default)s)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        help="max_tokens for chat requests that set none (default: the rest of the context window)",
    )
    p.add_argument(
        "--served-model-name", help="the model id clients send and /v1/models lists (default: the --model value)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default: %(default)s)",
    )
    p.set_defaults(func=cmd_serve)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so that ``--port 0`` works and the real port can be printed."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise ParadecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import ServeConfig, create_app
    except ImportError as exc:
        raise ParadecError(
            f"the server needs fastapi and uvicorn ({exc}); install them with: pip install 'paradec[serve]'"
        ) from exc
    from ..drafters import METHODS, make_drafter
    from ..model import load

    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict):
        raise ParadecError("--method-options must be a JSON object")
    if args.draft:
        options["draft"] = args.draft
    if args.method not in METHODS:
        raise ParadecError(f"unknown method '{args.method}'; choose one of: {', '.join(sorted(METHODS))}")
    if args.max_queue < 0:
        raise ParadecError("--max-queue must be >= 0")
    if args.default_max_tokens is not None and args.default_max_tokens < 1:
        raise ParadecError("--default-max-tokens must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ParadecError(f"--port must be in 0..65535, got {args.port}")
    sock = bind(args.host, args.port)  # before the model loads, so that a busy port fails fast
    model = load(args.model, args.dtype, args.runtime, args.quant)
    make_drafter(args.method, model, **options)  # a bad default method configuration fails now, not per request
    config = ServeConfig(
        method=args.method,
        method_options=options,
        model_name=args.served_model_name,
        api_key=args.api_key,
        max_queue=args.max_queue,
        default_max_tokens=args.default_max_tokens,
        request_options=args.request_options,
    )
    app = create_app(model, config)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"paradec serve: model '{config.model_name or model.name}' ({model.dtype}), method '{config.method}', "
        f"listening on http://{shown}:{port}",
        file=sys.stderr,
        flush=True,
    )
    if not is_loopback(args.host) and not args.api_key:
        print("paradec serve: warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    engine = app.state.engine

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # End the generations first, so that open streams finish (with an error event) and
            # their connections close; uvicorn then shuts down without waiting for them.
            threading.Thread(target=engine.close, daemon=True).start()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0
