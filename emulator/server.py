"""Run the emulator: in a background thread on a free loopback port (tests, `make index`) or blocking (CLI)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from .admin import AdminClient
from .app import Emulator, create_app
from .config import EmulatorConfig

STARTUP_TIMEOUT = 15.0


class _DropNoise(logging.Filter):
    """The "drop" fault closes connections mid-response on purpose; uvicorn logs that as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing response" not in record.getMessage()


def _quiet_drop_fault_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())


@dataclass
class RunningEmulator:
    """A started emulator: where it listens, a key it accepts, its admin client and its state."""

    base_url: str
    api_key: str
    admin: AdminClient
    emulator: Emulator
    host: str
    port: int


def _server(config: EmulatorConfig, host: str, port: int, log_level: str) -> tuple[uvicorn.Server, Emulator]:
    app = create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        # a "hang" fault may still hold a connection when we stop
        timeout_graceful_shutdown=2,
    )
    _quiet_drop_fault_logs()
    return uvicorn.Server(uv_config), app.state.emulator


@contextmanager
def running_emulator(
    config: EmulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> Iterator[RunningEmulator]:
    """Start the emulator in a daemon thread (port 0 = a free port), yield it, stop it on exit."""
    config = config or EmulatorConfig()
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only for it, and
    # without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server, emulator = _server(config, host, bound_port, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gemini-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the Gemini emulator did not start on {host}:{bound_port}")
        time.sleep(0.01)
    url_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{url_host}:{bound_port}"
    try:
        yield RunningEmulator(
            base_url=base_url,
            api_key=config.api_keys[0],
            admin=AdminClient(base_url),
            emulator=emulator,
            host=host,
            port=bound_port,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(
    config: EmulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
    fault_script: list[dict] | None = None,
) -> None:
    """Serve in the foreground until interrupted (the CLI); `fault_script` hits the first calls."""
    server, emulator = _server(config, host, port, log_level)
    if fault_script:
        emulator.faults.set(script=fault_script)
    server.run()
