"""``shitu serve``: open the index once, listen, and hand requests to uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from shitu.errors import ShituError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind before anything else, so a taken port or a bad host is one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ShituError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ShituError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(index: Path, model: Path | None, host: str, port: int, token: str | None, max_upload_mb: float,
          say=print, store: str | None = None):
    """Load everything, then serve until interrupted; ``say`` gets the lines a person should read;
    ``store``: a Milvus gallery's URL instead of the ``index`` folder."""
    try:
        import uvicorn

        from shitu.serve.app import create_app
    except ImportError as exc:
        raise ShituError(f"shitu serve needs FastAPI and uvicorn: pip install 'shitu[serve]' ({exc})") from None
    from shitu.index import Index
    from shitu.serve.service import Service

    if not max_upload_mb > 0:
        raise ShituError(f"--max-upload-mb must be above 0, got {max_upload_mb}")
    service = Service(Index(index, model, store=store), token, int(max_upload_mb * 2**20))
    service.warm()
    sock = listening_socket(host, port)
    if token is None and not is_loopback(host):
        say(f"warning: {host} is reachable from other machines and no token is set: anyone who can reach "
            f"it can change the index. Set --token or SHITU_TOKEN.")
    shown = f"[{host}]" if ":" in host else host
    bound_port = sock.getsockname()[1]
    say(f"serving {store or index} ({service.index.info()['count']} images) on http://{shown}:{bound_port}/ "
        f"(API docs at /docs); changes {'need the token' if token else 'are open to every client'}")
    config = uvicorn.Config(create_app(service), log_level="info", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    sys.stdout.flush()
