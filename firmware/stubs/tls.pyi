# MicroPython's `tls` (1.23+), as far as hemsfw/net_umqtt.py uses it.
from typing import Any

PROTOCOL_TLS_CLIENT: int
CERT_REQUIRED: int

class SSLContext:
    verify_mode: int
    def __init__(self, protocol: int) -> None: ...
    def load_verify_locations(self, cadata: bytes) -> None: ...
    def wrap_socket(self, sock: Any, server_side: bool = ..., do_handshake_on_connect: bool = ...,
                    server_hostname: str | None = ...) -> Any: ...
