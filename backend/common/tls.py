"""A private CA and a server certificate for mosquitto's TLS listener (openssl CLI).

`hems lab --tls` uses it; in production the operator brings their own PKI.  The CA is also
written in DER, because MicroPython's `SSLContext.load_verify_locations(cadata=...)` wants DER.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from backend.common.broker import TLSFiles


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path, host: str = "localhost", days: int = 30) -> TLSFiles:
    """CA (ca.crt, ca.der) and a server key/cert for `host` and 127.0.0.1, in directory d."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt, ca_der = d / "ca.key", d / "ca.crt", d / "ca.der"
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.crt", d / "server.ext"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt), "-days", str(days),
             "-subj", "/CN=hems lab CA")
    _openssl("x509", "-in", str(ca_crt), "-outform", "DER", "-out", str(ca_der))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    ext.write_text(
        f"subjectAltName=DNS:{host},IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(crt), "-days", str(days), "-extfile", str(ext))
    for p in (ca_key, key):
        p.chmod(0o600)
    return TLSFiles(cafile=ca_crt, certfile=crt, keyfile=key)
