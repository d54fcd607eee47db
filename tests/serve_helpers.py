"""A live paradec server on loopback for tests: uvicorn in a background thread on a free port."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time

import uvicorn

from paradec.serve.app import ServeConfig, create_app


class LiveServer:
    """``with LiveServer(model, ServeConfig(...)) as srv: srv.url`` (127.0.0.1, a port picked by the OS)."""

    def __init__(self, model, config: ServeConfig | None = None):
        self.app = create_app(model, config)
        self.worker = self.app.state.worker
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # the socket is handed to uvicorn: no race for the port
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval)


class ServeCommand:
    """``paradec serve --port 0`` as a subprocess; ``url()`` waits for the address it prints."""

    def __init__(self, *args: str):
        env = {k: v for k, v in os.environ.items() if k != "PARADEC_API_KEY"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paradec.cli", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._url: str | None = None

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 120.0) -> str | None:
        deadline = time.monotonic() + timeout
        while self._url is None and time.monotonic() < deadline and self.proc.poll() is None:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if "listening on " in line:
                self._url = line.split("listening on ")[1].strip()
        return self._url

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
