"""TLS against the operating system's trust store (issue #17, item 5): a studio CA installed in
the OS store is trusted without `ca_bundle`; requests' own certifi list would refuse it.

The OS store is OpenSSL's default on Linux, which honours ``SSL_CERT_FILE``: the test points it
at a private CA in a child process, so the machine's real store is never touched."""
from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def https_server(tmp_path):
    """An HTTPS server on 127.0.0.1 whose certificate a private CA signed."""
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Studio Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1",
             cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "srv.pem", d / "srv.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.server_address[1]}", d / "ca.pem"
    srv.shutdown()
    srv.server_close()
    t.join(5)


CHILD = """
import sys, requests
from watcher.publish.http import HttpClient
from watcher.errors import PublishError
mode, url = sys.argv[1], sys.argv[2]
if mode == "watcher":
    try:
        print("OK", HttpClient(url, retries=0, timeout=10).request("GET", "/"))
    except PublishError as exc:
        print("REFUSED", exc)
else:
    try:
        requests.get(url, timeout=10)
        print("OK")
    except requests.exceptions.SSLError:
        print("REFUSED")
"""


def _child(mode: str, url: str, ca: Path) -> str:
    env = {**os.environ, "SSL_CERT_FILE": str(ca)}
    for k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-c", CHILD, mode, url], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_ca_in_the_os_store_is_trusted_without_ca_bundle(https_server):
    url, ca = https_server
    assert _child("requests", url, ca) == "REFUSED"  # certifi alone would refuse the studio CA
    assert _child("watcher", url, ca).startswith("OK {'ok': True}")


def test_a_server_no_store_trusts_is_still_refused(https_server, tmp_path):
    url, _ca = https_server
    other = tmp_path / "other"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "o.key", "-out", "o.pem", "-days", "2",
             "-subj", "/CN=Someone Else", cwd=other)
    out = _child("watcher", url, other / "o.pem")
    assert out.startswith("REFUSED") and "certificate" in out.lower(), out
