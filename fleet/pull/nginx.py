"""An nginx in front of a folder store, as docs/pull.md describes it: everything read-only
except that a board may POST its own report (reports/NAME.json, at most 16 KiB), which
nginx hands to its WebDAV module as a PUT into the same folder. Used by the tests and
bench/pull.py on loopback; a site copies the same two server blocks."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ProgramError
from fleet.lab.ports import free_loopback_port

CONFIG = """\
worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    log_format bytes '$request_method $uri $status $bytes_sent';
    access_log {work}/access.log bytes;
    client_body_temp_path {store}/.incoming;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {host}:{port}{ssl};
        {certificates}
        root {store};
        location / {{
            limit_except GET {{ deny all; }}
        }}
        location ~ ^/reports/[A-Za-z0-9][A-Za-z0-9._-]*\\.json$ {{
            limit_except POST {{ deny all; }}
            client_max_body_size 16k;
            proxy_method PUT;
            proxy_pass http://127.0.0.1:{put_port};
        }}
    }}
    server {{
        listen 127.0.0.1:{put_port};
        root {store};
        client_max_body_size 16k;
        dav_methods PUT;
        create_full_put_path on;
        dav_access user:rw group:r all:r;
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    port: int
    access_log: Path
    scheme: str = "http"

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}"


@contextlib.contextmanager
def serving(
    store: Path, work: Path, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None
) -> Iterator[Nginx]:
    """nginx on HOST serving STORE; with TLS = (certificate chain, key), https only."""
    program = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(program).exists():
        raise ProgramError("nginx is not installed (make deps)")
    work.mkdir(parents=True, exist_ok=True)
    (store / ".incoming").mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    put_port = free_loopback_port({port})
    conf = work / "nginx.conf"
    certificates = (
        f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls is not None else ""
    )
    conf.write_text(
        CONFIG.format(
            work=work,
            store=store,
            host=host,
            port=port,
            put_port=put_port,
            ssl=" ssl" if tls else "",
            certificates=certificates,
        )
    )
    proc = subprocess.Popen(
        [program, "-c", str(conf), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not (work / "nginx.pid").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                why = proc.stderr.read().decode()[-500:] if proc.stderr else ""
                raise ProgramError(f"nginx did not start: {why}")
            time.sleep(0.02)
        yield Nginx(port, work / "access.log", "https" if tls else "http")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
