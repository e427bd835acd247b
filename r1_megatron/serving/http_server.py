"""uvicorn with the server's shutdown: the first SIGTERM/SIGINT drains the engine loop instead of closing at once."""
from __future__ import annotations

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT closes the engine loop (503 for new requests; running ones finish, or are
    aborted at the deadline) while HTTP goes on serving them; the loop's end then sets should_exit. A second
    signal is uvicorn's own (exit now). Prints the URL once listening."""

    def __init__(self, config: uvicorn.Config, engine_loop, grace_s: float, name: str):
        super().__init__(config)
        self.engine_loop, self.grace_s, self.name = engine_loop, grace_s, name

    def handle_exit(self, sig, frame) -> None:
        if self.engine_loop.closing:
            return super().handle_exit(sig, frame)
        self.engine_loop.close(self.grace_s)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            print(f"serving {self.name!r} at http://{host}:{port}/v1", flush=True)
