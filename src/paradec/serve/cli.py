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
from .config import COST_CURVES, LOOPBACK_HOSTS, MAX_BODY_BYTES, MAX_VIEWS, STALL_AFTER, ServeConfig


def add_parser(subparsers) -> None:
    from ..cli import add_model_args

    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (completions, chat, streaming)",
        description="Serve one model over the OpenAI API: /v1/completions, /v1/chat/completions, /v1/models, /health, "
        "/metrics (Prometheus). Concurrent requests are decoded together (continuous batching). "
        'A request picks its method with the extra body field "paradec": {"method": NAME} (default: --method, '
        'auto unless set); it may set only the method options that --request-options opens, and a time limit up '
        'to --max-timeout; with "view": true its response names a page showing its decoding, '
        "/v1/paradec/view/ID.",
    )
    add_model_args(p)
    p.add_argument(
        "--method",
        default="auto",
        help="default decoding method, see `paradec methods`; 'auto' picks the fastest lossless one step by step "
        "(from the runtime's cost curve, measured once per machine, model and format, and cached) (default: %(default)s)",
    )
    p.add_argument(
        "--draft",
        metavar="MODEL",
        help="draft model for the `draft` method and `auto`, default or requested (same kinds of spec as --model); "
        "requests can never name one",
    )
    p.add_argument("--method-options", metavar="JSON", help="options of the default method as a JSON object")
    p.add_argument(
        "--request-options",
        metavar="LIST",
        default="",
        help='method options requests may set in "paradec": {"options": ...}, comma-separated as method.option '
        "(e.g. ngram.max_depth,recycling.k), or 'all' (default: none)",
    )
    p.add_argument(
        "--share-drafter-state",
        action="store_true",
        help="reuse drafters across requests, so learning methods (recycling) use what other clients' text "
        "taught them; off by default: each request starts from a fresh drafter",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="time limit of a request from its arrival; then its answer ends (default: --max-timeout)",
    )
    p.add_argument(
        "--max-timeout",
        type=float,
        metavar="SECONDS",
        help='the longest time limit a request may ask for with "paradec": {"timeout": s} (default: no limit)',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default: %(default)s)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("PARADEC_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $PARADEC_API_KEY)",
    )
    p.add_argument(
        "--allowed-hosts",
        metavar="LIST",
        help="host names the Host header may carry, comma-separated, or '*' for any (default: 127.0.0.1, "
        "localhost, ::1 and --host); a guard against DNS rebinding",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        metavar="N",
        help="larger request bodies get 413 before they are parsed (default: %(default)s)",
    )
    p.add_argument(
        "--stall-after",
        type=float,
        default=STALL_AFTER,
        metavar="SECONDS",
        help="/health answers 503 when the running generation has not finished a step for this long "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-views",
        type=int,
        default=MAX_VIEWS,
        metavar="N",
        help='decoding views kept for requests that ask with "paradec": {"view": true} (a page per request at '
        "/v1/paradec/view/ID, readable only with the requesting key), the oldest dropped first; 0 refuses "
        "such requests (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="sequences decoded together, one forward per step for all; requests join and leave between "
        "steps (a request with n choices brings n) (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests that may wait while the batch is full; more get 429 (default: %(default)s)",
    )
    p.add_argument(
        "--cost-curve",
        choices=COST_CURVES,
        default="measure",
        help="'measure': read the cost curve of forwards over 1..64 rows at start-up (measured once per machine, "
        "model, format and thread count, a few seconds, then cached in $PARADEC_CACHE/costs) and stop drafting "
        "for the batch while drafts cost more than they save at its size; 'off': requests draft as their "
        "method decides (default: %(default)s)",
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


def is_wildcard(host: str) -> bool:
    """0.0.0.0 or ::, which bind every address (clients then use names this server cannot know)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def split_list(value: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [item.strip() for item in value.split(",") if item.strip()]


def server_config(args: argparse.Namespace) -> ServeConfig:
    """The command line's settings, all checked (before anything is loaded)."""
    options = json.loads(args.method_options) if args.method_options else {}
    if not isinstance(options, dict):
        raise ParadecError("--method-options must be a JSON object")
    if not 0 <= args.port <= 65535:
        raise ParadecError(f"--port must be in 0..65535, got {args.port}")
    hosts = split_list(args.allowed_hosts) if args.allowed_hosts else [*LOOPBACK_HOSTS, args.host]
    try:
        return ServeConfig(
            method=args.method,
            method_options=options,
            draft=args.draft,
            model_name=args.served_model_name,
            api_key=args.api_key,
            max_queue=args.max_queue,
            max_batch=args.max_batch,
            cost_curve=args.cost_curve,
            default_max_tokens=args.default_max_tokens,
            request_options=frozenset(split_list(args.request_options)),
            share_drafter_state=args.share_drafter_state,
            timeout=args.timeout,
            max_timeout=args.max_timeout,
            stall_after=args.stall_after,
            max_body_bytes=args.max_body_bytes,
            max_views=args.max_views,
            allowed_hosts=tuple(hosts),
        )
    except ValueError as exc:
        raise ParadecError(f"bad server setting: {exc}") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise ParadecError(
            f"the server needs fastapi and uvicorn ({exc}); install them with: pip install 'paradec[serve]'"
        ) from exc
    from ..model import load

    config = server_config(args)
    sock = bind(args.host, args.port)  # before the model loads, so that a busy port fails fast
    model = load(args.model, args.dtype, args.runtime, args.quant)
    app = create_app(model, config)  # loads --draft and checks the default method's options
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
    if is_wildcard(args.host) and not args.allowed_hosts:
        print(
            f"paradec serve: note: only requests to {', '.join(config.allowed_hosts)} are answered; "
            "name this machine's host names with --allowed-hosts",
            file=sys.stderr,
            flush=True,
        )
    engine = app.state.engine

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # End the generations first, so that open streams finish (with an error event) and
            # their connections close; uvicorn then shuts down without waiting for them.
            threading.Thread(target=engine.close, daemon=True).start()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0
