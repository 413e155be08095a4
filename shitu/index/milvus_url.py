"""Where a Milvus gallery lives: the ``--store`` URL, and a pymilvus client for it.

``milvus://[USER:PASSWORD@]HOST[:PORT]/COLLECTION`` names a server, ``milvus-lite:PATH.db[/COLLECTION]``
a Milvus Lite folder (pymilvus runs Milvus Lite in-process for a path ending in ``.db``). Every mistake
in a URL, an unreachable server and a Milvus Lite folder another process holds are one ShituError line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shitu.errors import ShituError

GENERATION = re.compile(r"^(?P<alias>.+)__g(?P<n>[0-9]+)$")  # the collections behind an alias
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NAME_LIMIT = 200  # Milvus allows 255 characters; the generation suffix needs the rest
DEFAULT_LITE_COLLECTION = "gallery"
DEFAULT_PORT = 19530
CONNECT_TIMEOUT = 10.0

_client_lock = threading.Lock()
_lite_users: Counter = Counter()  # open stores per Milvus Lite folder: they share one in-process server


# -- the URL ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MilvusURL:
    """Where a gallery lives: a Milvus server's address or a Milvus Lite folder, and the alias name."""

    text: str
    collection: str
    lite_path: Path | None = None  # milvus-lite:PATH.db
    host: str = ""
    port: int = DEFAULT_PORT
    token: str = ""  # user:password for a server with authentication

    @property
    def lite(self) -> bool:
        return self.lite_path is not None

    @property
    def uri(self) -> str:
        """What ``pymilvus.MilvusClient`` takes."""
        return str(self.lite_path) if self.lite else f"http://{self.host}:{self.port}"

    def __str__(self) -> str:  # never shows a password
        if self.lite:
            return f"milvus-lite:{self.lite_path}/{self.collection}"
        return f"milvus://{self.host}:{self.port}/{self.collection}"


def is_milvus_url(text: str | os.PathLike) -> bool:
    """Whether a ``--store`` value names Milvus rather than an index folder."""
    return isinstance(text, str) and text.startswith(("milvus://", "milvus-lite:"))


def parse_url(text: str) -> MilvusURL:
    """``milvus://[USER:PASSWORD@]HOST[:PORT]/COLLECTION`` or ``milvus-lite:PATH.db[/COLLECTION]``.

    Milvus Lite keeps a database in a folder whose name ends in ``.db`` (pymilvus's convention), so the
    first ``.db`` that ends a path component ends the path; what follows is the collection.
    """
    if text.startswith("milvus-lite:"):
        return parse_lite(text)
    if text.startswith("milvus://"):
        return parse_server(text)
    raise ShituError(f"--store {text!r}: expected milvus://HOST:PORT/COLLECTION or milvus-lite:PATH.db"
                     f"[/COLLECTION]")


def parse_lite(text: str) -> MilvusURL:
    rest = text[len("milvus-lite:"):]
    match = re.fullmatch(r"(?P<path>.*?[^/]\.db)(?:/(?P<name>[^/]+))?/?", rest)
    if not match:
        raise ShituError(f"--store {text!r}: Milvus Lite needs a path ending in .db, as in "
                         f"milvus-lite:galleries/shop.db or milvus-lite:galleries/shop.db/COLLECTION")
    name = match["name"] or DEFAULT_LITE_COLLECTION
    require_name(name, text)
    return MilvusURL(text, name, lite_path=Path(os.path.abspath(os.path.expanduser(match["path"]))))


def parse_server(text: str) -> MilvusURL:
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ShituError(f"--store {text!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ShituError(f"--store {text!r}: no host; expected milvus://HOST:PORT/COLLECTION")
    if parts.query or parts.fragment:
        raise ShituError(f"--store {text!r}: a Milvus URL takes no ?query or #fragment")
    name = parts.path.strip("/")
    if not name:
        raise ShituError(f"--store {text!r}: no collection; expected milvus://{parts.hostname}:{port}/COLLECTION")
    require_name(name, text)
    token = ""
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return MilvusURL(text, name, host=parts.hostname, port=port, token=token)


def require_name(name: str, text: str):
    if not NAME.fullmatch(name) or len(name) > NAME_LIMIT or GENERATION.match(name):
        raise ShituError(f"--store {text!r}: collection name {name!r} must start with a letter or '_', hold "
                         f"only letters, digits and '_', be at most {NAME_LIMIT} characters and not end in "
                         f"'__g' and a number")


# -- connecting -------------------------------------------------------------------------------------
def pymilvus_module():
    """pymilvus, with its error log (a traceback per failed call) turned off: shitu explains failures.

    gRPC's own log is silenced too: Milvus Lite's in-process server answers pymilvus's keepalive pings
    with "too_many_pings" and gRPC prints each reconnection to stderr.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        import pymilvus
    except ImportError:
        raise ShituError("a Milvus store needs pymilvus (and milvus-lite for milvus-lite: URLs): "
                         "pip install 'shitu[milvus]'") from None
    for name in list(logging.root.manager.loggerDict) + ["pymilvus", "milvus_lite"]:
        if name.split(".")[0] in ("pymilvus", "milvus_lite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def connect(url: MilvusURL, create: bool = False):
    """A ``MilvusClient`` for the URL; ``create`` allows making a new Milvus Lite folder."""
    pymilvus = pymilvus_module()
    if url.lite:
        require_lite_folder(url, create)
    try:
        with _client_lock:
            client = pymilvus.MilvusClient(uri=url.uri, token=url.token, timeout=CONNECT_TIMEOUT)
            if url.lite:
                _lite_users[str(url.lite_path)] += 1
            return client
    except pymilvus.exceptions.MilvusException as exc:
        if url.lite:
            if lite_in_use(url.lite_path):
                raise ShituError(f"{url} is open in another process; Milvus Lite allows one process per "
                                 f".db folder (run a Milvus server for more): try again when it has finished")
            raise ShituError(f"cannot open {url}: {explain(exc)} (is milvus-lite installed? pip install "
                             f"'shitu[milvus]')") from None
        raise ShituError(f"cannot reach the Milvus server at {url.host}:{url.port}: {explain(exc)}") from None


def require_lite_folder(url: MilvusURL, create: bool):
    path = url.lite_path
    if path.exists() and not path.is_dir():
        raise ShituError(f"{url}: {path} is a file, not a Milvus Lite folder")
    if not path.exists():
        if not create:
            raise no_gallery(url)
        if not path.parent.is_dir():
            raise ShituError(f"{url}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ShituError(f"{url}: cannot write to {path.parent}")


def lite_in_use(path: Path) -> bool:
    """Whether another process holds Milvus Lite's lock on ``path``."""
    try:
        fd = os.open(path / "LOCK", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def release(url: MilvusURL, client):
    """Close the client and, for Milvus Lite, stop its in-process server when no other store of this
    process uses it, so the folder's lock is freed for other processes."""
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken connection has nothing left to report
        pass
    if url.lite:
        with _client_lock:
            _lite_users[str(url.lite_path)] -= 1
            if _lite_users[str(url.lite_path)] > 0:
                return
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:
            return
        server_manager_instance.release_server(str(url.lite_path))


def explain(exc) -> str:
    """The one readable line of a pymilvus exception."""
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())


def no_gallery(url: MilvusURL) -> ShituError:
    return ShituError(f"no gallery at {url}: run 'shitu build-index GALLERY --store {url.text}'")
