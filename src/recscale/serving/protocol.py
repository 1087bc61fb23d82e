"""The HTTP/1.1 connection, with the limits uvicorn leaves open.

uvicorn bounds connections (503 beyond `limit_concurrency`), idle keep-alive time and the shutdown
grace period, but not the size of a request's head nor the time a client takes to send a request:
a client that trickles its headers (slowloris) or its body would hold a connection for ever. This
protocol (httptools' parser, as uvicorn's default) refuses a request line over `max_request_line`
bytes (414) and header fields over `max_header_bytes` (431), and gives every request
`read_timeout_s` from its first byte (or the connection's start) to arrive whole: 408 after that,
and the connection closed. The body limit itself is the app's (413), since only the app knows
what it reads.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from recscale.serving.settings import ServerConfig


class RequestTooLarge(Exception):
    """Raised inside a parser callback: httptools stops parsing and uvicorn answers through
    `send_400_response`, which sends our status instead."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        limits: ServerConfig = getattr(config, "recscale_limits", None) or ServerConfig()
        self.max_line, self.max_headers = limits.max_request_line, limits.max_header_bytes
        self.read_timeout = limits.read_timeout_s
        self.line_bytes = self.header_bytes = 0
        self.refusal: tuple[int, str] | None = None
        self.deadline = None

    # ------------------------------------------------------------------ the read deadline

    def _arm(self) -> None:
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self._send(408, f"request not received within {self.read_timeout:g} s")
        else:  # answered already (a 503 or 413 before the body arrived), or answering: just close
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()  # a client that connects and sends nothing is timed out too

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.line_bytes = self.header_bytes = 0
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # ------------------------------------------------------------------ head sizes

    def on_url(self, url: bytes) -> None:
        self.line_bytes += len(url)
        if self.line_bytes > self.max_line:
            self.refusal = (414, f"request line over {self.max_line} bytes")
            raise RequestTooLarge()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_bytes > self.max_headers:
            self.refusal = (431, f"request header fields over {self.max_headers} bytes")
            raise RequestTooLarge()
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        status, message = self.refusal or (400, msg)
        self._send(status, message)

    def _send(self, status: int, message: str) -> None:
        """A whole JSON error response, then close (the request was not read: the connection's
        state is unknown)."""
        self._disarm()
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()
