"""``paradec serve --replicas N``: the same server as N Ray Serve replicas behind one address.

Each replica is a process that loads the model and runs ``create_app`` as it is (its own engine,
worker and continuous batch); Ray Serve's proxy spreads requests over them, and the OpenAI routes,
guards and errors are unchanged. Install with ``pip install 'paradec[ray]'``.

Loopback only: Ray's own servers (GCS, raylet, workers, agents) listen on the node's address, which
is pinned to 127.0.0.1 here (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take the loopback
address as the node's, so none of them listens beyond this machine); each replica's inter-deployment
gRPC server, which Ray Serve binds to every interface with no setting to change it, is moved to
loopback (``loopback_replica_grpc``); the HTTP proxy listens on ``--host`` (127.0.0.1 by default).
No dashboard UI is started. Stop it with Ctrl-C or SIGTERM to the ``paradec`` process: it shuts Ray
Serve, then Ray, down in order.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

from ..errors import ParadecError
from .config import ServeConfig

# Ray's settings, by environment (its processes inherit it): the node's address is the loopback one;
# replicas run at normal priority (Ray starts its workers at niceness 15: they would yield to anything)
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_worker_niceness": "0"}
REPLICA_HEADER = b"x-paradec-replica"


class TagReplica:
    """ASGI wrapper that names the replica (its process id) in every response's headers."""

    def __init__(self, app, name: str):
        self.app, self.name = app, name.encode()

    async def __call__(self, scope, receive, send) -> None:
        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.name)]}
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


def loopback_replica_grpc() -> None:
    """Make this replica's inter-deployment gRPC server listen on 127.0.0.1 instead of every interface.

    Ray Serve 2.60 binds it to ``[::]:0`` in ``Replica._on_initialized`` (after the user's constructor)
    through ``ray.serve._private.replica.add_port_to_grpc_server``, and offers no setting for the host
    (ray-project/ray#64544 and #64623 ask for a setting of its port). This is the one place paradec
    reaches into Ray: it swaps that module's reference for a wrapper that rewrites the wildcard host;
    the test of ``--replicas`` checks that nothing Ray starts listens beyond loopback, so a Ray that
    moves the call fails it loudly.
    """
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "paradec_loopback", False):
        return

    def on_loopback(server, address: str):
        return bind(server, "127.0.0.1:" + address[len("[::]:"):] if address.startswith("[::]:") else address)

    on_loopback.paradec_loopback = True
    replica.add_port_to_grpc_server = on_loopback


class Replica:
    """One Ray Serve replica: the model and the app, built in the replica's process."""

    def __init__(self, model: dict[str, Any], config: ServeConfig, threads: int):
        import torch

        loopback_replica_grpc()

        from ..model import load
        from .app import create_app

        torch.set_num_threads(threads)
        self.asgi = TagReplica(create_app(load(**model), config), str(os.getpid()))

    def __serve_build_asgi_app__(self):
        return self.asgi


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace, config: ServeConfig) -> int:
    """Start Ray on loopback, deploy ``args.replicas`` replicas, serve until SIGINT/SIGTERM."""
    os.environ.update(RAY_ENV)  # before Ray starts its processes, which inherit it
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ParadecError(f"--replicas needs Ray Serve ({exc}); install it with: pip install 'paradec[ray]'") from exc
    port = args.port or free_port(args.host)
    threads = max(1, (os.cpu_count() or 1) // args.replicas)
    model = {"spec": args.model, "dtype": args.dtype, "runtime": args.runtime, "quant": args.quant}
    # a view's URL may reach any replica: they keep their views in one private folder (mode 0700)
    views = tempfile.mkdtemp(prefix="paradec-views-")
    config = dataclasses.replace(config, views_dir=views)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_cpus=max(os.cpu_count() or 1, args.replicas))
    try:
        serve.start(http_options={"host": args.host, "port": port})
        deployment = serve.deployment(serve.ingress()(Replica), name="paradec", num_replicas=args.replicas,
                                      ray_actor_options={"num_cpus": 1})
        serve.run(deployment.bind(model, config, threads), name="paradec", route_prefix="/")
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"paradec serve: model '{config.model_name or args.model}', {args.replicas} Ray Serve replicas, "
              f"listening on http://{shown}:{port}", file=sys.stderr, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(views, ignore_errors=True)
    return 0
