"""`recscale serve`'s settings, in one checked dataclass: its fields are the command's flags (with
their defaults in --help), `create_app`'s keyword arguments and what the worker processes inherit.

The limits bound what one client can make the server hold: bytes before a request is refused
(request line, headers, body), time to send a whole request, and connections at once. Their
defaults suit a service behind a load balancer; each has a flag."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

from recscale.config.fields import Checked, at_least, in_range, option, positive

MAX_REQUEST_K = 1000  # items one request may ask for (recommend lists and metrics go to config.MAX_K)
MAX_ITEMS = 10_000  # items in one request's history or candidates


@dataclasses.dataclass(frozen=True)
class ServerConfig(Checked):
    """How `recscale serve` serves a bundle."""

    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface; see README: Security)")
    port: int = option(8000, "TCP port", check=in_range(0, 65535, high_inclusive=True))
    workers: int = option(1, "server processes (the CPUs are divided between them)", check=in_range(1, 1025))
    max_batch: int = option(64, "requests scored together at most", check=in_range(1, 1 << 16))
    max_wait_ms: float = option(8.0, "how long a busy service waits for more requests to fill a batch (an idle "
                                "one does not wait)", check=in_range(0, 1000, high_inclusive=True))
    runtime: str = option("auto", "auto: ONNX Runtime when the bundle has an ONNX graph; torch needs "
                          "--trust-bundle", choices=("auto", "onnx", "torch"))
    trust_bundle: bool = option(False, "allow the bundle's torch.export program (loading it unpickles the file, "
                                "which can run code: only for bundles you made)")
    index: str = option("none", "top-k through a FAISS index (inner-product models): flat (exact) or ivf "
                        "(approximate, for very large catalogs)", choices=("none", "flat", "ivf"))
    nprobe: int = option(16, "--index ivf: cells searched per query", check=at_least(1))
    threads: int = option(0, "threads per worker (0: the CPUs / workers)", check=in_range(0, 4097))
    max_body_bytes: int = option(1 << 20, "largest request body (also when sent in chunks without "
                                 "Content-Length): 413 beyond", check=in_range(1, 1 << 30, high_inclusive=True))
    max_request_line: int = option(8192, "largest request line (method, path, query): 414 beyond",
                                   check=in_range(64, 1 << 20, high_inclusive=True))
    max_header_bytes: int = option(16384, "largest total of the request's header fields: 431 beyond",
                                   check=in_range(256, 1 << 22, high_inclusive=True))
    read_timeout_s: float = option(10.0, "time a client has to send a whole request (headers and body): "
                                   "408 and the connection closed after", check=positive)
    keep_alive_s: int = option(5, "an idle keep-alive connection is closed after this many seconds",
                               check=in_range(1, 3600, high_inclusive=True))
    max_connections: int = option(128, "connections (or requests in flight) at once: 503 beyond",
                                  check=in_range(1, 1 << 20, high_inclusive=True))
    grace_s: int = option(10, "on SIGTERM/SIGINT: stop accepting, then give requests in flight this many "
                          "seconds to finish", check=in_range(0, 3600, high_inclusive=True))
    api_key_file: Optional[str] = option(None, "file holding an API key: every request but GET /health must "
                                         "send it (Authorization: Bearer KEY or X-API-Key: KEY), else 401")
    admin_token_env: Optional[str] = option(None, "environment variable holding an admin token (16+ characters): "
                                            "enables POST /admin/reload, which swaps in the bundle at --bundle "
                                            "again (X-Admin-Token: TOKEN); off by default. SIGHUP swaps too")
    docs: bool = option(True, "the interactive API docs (/docs, /redoc, /openapi.json); --no-docs to hide them")
    tls_cert: Optional[str] = option(None, "PEM certificate: serve HTTPS (with --tls-key)")
    tls_key: Optional[str] = option(None, "PEM private key of --tls-cert")

    def relations(self) -> None:
        from recscale.config.fields import ConfigError
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_key" if self.tls_key is None else "tls_cert", "--tls-cert and --tls-key go together")
        if self.admin_token_env is not None and self.workers > 1:
            raise ConfigError("admin_token_env", "/admin/reload would swap the one worker that answers it: with "
                              "--workers above 1, send SIGHUP to the server's main process (uvicorn replaces the "
                              "workers one by one, keeping an old one whose replacement fails to start)")
        if self.runtime == "torch" and not self.trust_bundle:
            raise ConfigError("runtime", "torch runs the bundle's torch.export program, whose loader unpickles "
                              "(it can run code): pass --trust-bundle for a bundle you made, or use onnx")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServerConfig":
        return cls(**json.loads(text))
