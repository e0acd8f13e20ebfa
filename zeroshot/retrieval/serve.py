"""``zeroshot serve``: a small HTTP search service over an Index (stdlib ``ThreadingHTTPServer``).

    GET  /                       the search page (``/?q=words&k=N`` or ``/?id=I&k=N`` opens with that search)
    GET  /api/info               what is indexed (no file system paths)
    GET  /api/search?text=T&k=N  text -> images; ``&captions=1`` also matches the stored captions
    GET  /api/search?id=I&k=N    image -> images for an indexed image (itself left out)
    POST /api/search?k=N         image -> images; the request body is an image file (at most ``max_upload`` bytes)
    GET  /images/<id>            an indexed image file
    GET  /thumbnails/<id>        the same image at most ``THUMBNAIL_PX`` on a side, made once and cached on disk

Every search takes ``&dedup=1`` to hide near-duplicates; HEAD works wherever GET does. Only files of indexed ids are
served, and only when their real path (symlinks resolved) lies under a folder the index was built from. Requests
whose ``Host`` header names another host than the bound one or ``localhost`` are refused (DNS rebinding), unless
allowed. Every error, the HTTP layer's own included (405, 413, 414, 431, 501 ...), is JSON ``{"error": "..."}``; a
client that hangs up early is let go without a traceback or an error line.
"""
from __future__ import annotations

import errno
import json
import logging
import mimetypes
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..cache import default_cache_dir, digest
from ..images import IMAGE_EXTENSIONS, BadImage, open_image
from .index import Index
from .page import PAGE
from .search import DEDUP_COSINE, Hit, search_ids, search_images, search_text

log = logging.getLogger(__name__)

MAX_UPLOAD = 8 << 20
MAX_K = 100
MAX_TEXT = 1000
THUMBNAIL_PX = 256
CACHE_SECONDS = 86400  # Cache-Control max-age of images and thumbnails: a browser asks again after a day
TIMEOUT_SECONDS = 60  # a connection that sends nothing for this long is closed (its thread freed)
FLAGS = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False,
         "": False}


class ApiError(Exception):
    """A request the service refuses: an HTTP status and a message saying what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SearchService:
    """What the HTTP layer calls: queries to JSON-ready dicts, ids to servable files."""

    def __init__(self, index: Index, backbone, *, max_upload: int = MAX_UPLOAD, templates: list[str] | None = None,
                 dedup_cosine: float = DEDUP_COSINE, thumbnails: str | os.PathLike | None = None):
        """``dedup_cosine``: what ``&dedup=1`` hides (see :func:`~zeroshot.retrieval.search.search_text`);
        ``thumbnails``: their cache folder (default: ``thumbnails`` in the default cache)."""
        index.check_fingerprint(backbone.fingerprint)
        self.index, self.backbone, self.max_upload, self.templates = index, backbone, max_upload, templates
        self.dedup_cosine = dedup_cosine
        self.thumbnails = Path(thumbnails) if thumbnails is not None else default_cache_dir() / "thumbnails"
        self.roots = [Path(root).resolve() for root in index.roots]
        self._lock = threading.Lock()  # one encoder, built on first use: queries take turns with it

    def info(self) -> dict:
        """What the page shows about the index: sizes and names, never a path on this machine."""
        index = self.index
        return {"n": len(index), "factory": index.factory, "params": index.params, "fingerprint": index.fingerprint,
                "backbone": public_name(index.backbone), "has_images": index.paths is not None,
                "captions": len(index.captions)}

    def search(self, query: dict[str, str], upload: bytes | None = None) -> dict:
        """One search from the API's parameters (``text``, ``id`` or an upload; ``k``, ``dedup``, ``captions``)."""
        k = self._k(query.get("k", "10"))
        dedup = self.dedup_cosine if self._flag(query, "dedup") else None
        options = {"dedup": True} if dedup else {}
        if upload is not None:
            if not upload:
                raise ApiError(400, "empty upload: send an image file as the request body")
            with self._lock:
                hits = self._run(search_images, self.index, self.backbone, [upload], k, dedup=dedup)
            return self._answer({"image": "upload", **options}, k, hits)
        if "id" in query:
            hits = self._run(search_ids, self.index, [query["id"]], k, dedup=dedup)
            return self._answer({"id": query["id"], **options}, k, hits)
        text = query.get("text", "").strip()
        if not text:
            raise ApiError(400, "Nothing to search for: type some words to find matching images, or choose an "
                                "image to find similar ones (API: ?text=words, ?id=an indexed id, or POST an image).")
        if len(text) > MAX_TEXT:
            raise ApiError(400, f"query too long ({len(text)} characters, at most {MAX_TEXT})")
        captions = self._flag(query, "captions")
        with self._lock:
            hits = self._run(search_text, self.index, self.backbone, [text], k, self.templates, captions=captions,
                             dedup=dedup)
        return self._answer({"text": text, **options, **({"captions": True} if captions else {})}, k, hits)

    @staticmethod
    def _k(value: str) -> int:
        try:
            k = int(value)
        except ValueError:
            k = 0
        if not 1 <= k <= MAX_K:
            raise ApiError(400, f"k must be a whole number from 1 to {MAX_K}, got {value!r}")
        return k

    @staticmethod
    def _flag(query: dict[str, str], name: str) -> bool:
        value = query.get(name, "").lower()
        if value not in FLAGS:
            raise ApiError(400, f"{name} must be 1 or 0 (on or off), got {value!r}")
        return FLAGS[value]

    @staticmethod
    def _run(function, *args, **options) -> list[Hit]:
        try:
            return function(*args, **options)[0]
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _answer(self, query: dict, k: int, hits: list[Hit]) -> dict:
        """The JSON answer: per hit its id, score, image and thumbnail URLs (None without a file), all its captions
        and, with caption matching, the one that matched."""
        results = []
        for hit, row in zip(hits, self.index.positions([hit.id for hit in hits]).tolist()):
            name = quote(str(hit.id), safe="")
            results.append({"id": hit.id, "score": hit.score, "image": f"/images/{name}" if hit.path else None,
                            "thumbnail": f"/thumbnails/{name}" if hit.path else None,
                            "captions": self.index.captions_of(row),
                            **({"caption": hit.caption} if hit.caption is not None else {})})
        return {"query": query, "k": k, "results": results}

    def image_file(self, image_id: str) -> Path:
        """The file behind an indexed id, if it may be served."""
        try:
            row = int(self.index.positions([image_id])[0])
        except KeyError:
            raise ApiError(404, f"no indexed image with id {image_id!r}") from None
        path = self.index.paths[row] if self.index.paths is not None else ""
        if not path:
            raise ApiError(404, f"{image_id!r} was indexed from arrays, not from an image file")
        real = Path(path).resolve()
        if not any(real.is_relative_to(root) for root in self.roots):
            raise ApiError(403, f"the file of {image_id!r} lies outside the indexed folders")
        if real.suffix.lower() not in IMAGE_EXTENSIONS or not real.is_file():
            raise ApiError(404, f"the image file of {image_id!r} is missing")
        return real

    def thumbnail_file(self, image_id: str) -> Path:
        """The cached thumbnail of an indexed image that may be served (see :func:`thumbnail`)."""
        try:
            return thumbnail(self.image_file(image_id), self.thumbnails)
        except BadImage as exc:
            raise ApiError(404, f"the image file of {image_id!r} cannot be decoded: {exc}") from None


def thumbnail(path: Path, folder: Path, size: int = THUMBNAIL_PX) -> Path:
    """A JPEG of the image at ``path``, at most ``size`` pixels on a side, made on first use and kept in ``folder``
    under a name derived from the file's path, modification time and byte size (a changed file gets a new one).
    JPEGs are decoded at a reduced DCT scale, so a 5 MB photo costs a fraction of a full decode; a JPEG already that
    small is its own thumbnail (encoding it again would only make it larger)."""
    stat = path.stat()
    out = folder / f"{digest([str(path), stat.st_mtime_ns, stat.st_size, size], 24)}.jpg"
    if not out.is_file():
        image = open_image(path, draft_size=size)
        if image.format == "JPEG" and max(image.size) <= size:
            return path
        image.thumbnail((size, size))
        folder.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # two requests at once
        image.save(partial, "JPEG", quality=85)
        os.replace(partial, out)
    return out


def public_name(name: str | None) -> str | None:
    """A backbone name with a local model's folder cut to its last part: ``local-dir:/home/me/models/m`` -> ``local-dir:m``,
    so that no path on the server leaves it."""
    if name is None:
        return None
    prefix, colon, rest = name.rpartition(":")
    return prefix + colon + Path(rest).name if os.path.isabs(rest) else name


class _Handler(BaseHTTPRequestHandler):
    server_version = "zeroshot"
    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT_SECONDS

    @property
    def service(self) -> SearchService:
        return self.server.service

    def do_GET(self) -> None:
        self._respond(self._get)

    do_HEAD = do_GET  # the same answer, without its body (see _send)

    def do_POST(self) -> None:
        self._respond(self._post)

    def do_PUT(self) -> None:
        self._respond(self._not_allowed)

    do_DELETE = do_PATCH = do_PUT

    def _respond(self, route) -> None:
        try:
            self._check_host()
            route(urlsplit(self.path))
        except ApiError as exc:
            self._json(exc.status, {"error": exc.message})
        except (ConnectionError, TimeoutError):  # the client hung up or stalled: nobody is left to answer
            self.close_connection = True
        except Exception as exc:  # a bug, not a bad query: say so in JSON, keep the trace (and any paths) in the log
            log.exception("internal error answering %s %s", self.command, self.path)
            self._json(500, {"error": f"internal error ({type(exc).__name__}); the server's log has the details"})

    def _check_host(self) -> None:
        """Refuse a ``Host`` the server does not go by: a page on another site whose name was re-pointed at this
        machine (DNS rebinding) would send its own name."""
        host = urlsplit("//" + self.headers.get("Host", "")).hostname
        allowed = self.server.allowed_hosts
        if "*" not in allowed and host not in allowed:
            self.close_connection = True
            raise ApiError(403, f"this server answers to {', '.join(sorted(allowed))}, not to host {host!r}; start "
                                f"it with --allow-host {host or 'NAME'} to allow that name")

    def _get(self, url) -> None:
        if url.path == "/":
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(200, self.service.info())
        elif url.path == "/api/search":
            self._json(200, self.service.search(self._query(url.query)))
        elif url.path.startswith(("/images/", "/thumbnails/")):
            folder, _, name = url.path[1:].partition("/")
            path = (self.service.image_file if folder == "images" else self.service.thumbnail_file)(unquote(name))
            self._send(200, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                       cache=True)
        else:
            raise ApiError(404, f"nothing at {url.path}")

    def _post(self, url) -> None:
        if url.path != "/api/search":
            self._not_allowed(url)
        self._json(200, self.service.search(self._query(url.query), self._body()))

    def _not_allowed(self, url) -> None:
        self.close_connection = True  # a body, if any, stays unread
        raise ApiError(405, f"{self.command} {url.path} is not supported: GET (or HEAD) the page, the API and the "
                            "images, POST an image to /api/search")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The HTTP layer's own refusals (a malformed request, 414, 431, 501 ...) as JSON too."""
        self.close_connection = True
        self._json(code, {"error": message or explain or self.responses.get(code, ("", "refused"))[1]})

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise ApiError(411, "send the image with a Content-Length header")
        if not length.isdigit():
            self.close_connection = True
            raise ApiError(400, f"bad Content-Length {length!r}")
        if int(length) > self.service.max_upload:
            self.close_connection = True  # the body is not read: this connection cannot carry another request
            raise ApiError(413, f"upload of {int(length):,} bytes is larger than the {self.service.max_upload:,} "
                                "allowed: send a smaller image")
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise ConnectionAbortedError("the client hung up during its upload")
        return body

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()}

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if cache:
            self.send_header("Cache-Control", f"max-age={CACHE_SECONDS}")
        if status == 405:
            self.send_header("Allow", "GET, HEAD, POST")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up between requests is no error; anything else gets the usual traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *, verbose: bool = False,
                allow_hosts: list[str] = ()) -> ThreadingHTTPServer:
    """A bound, not yet running server (port 0 picks a free one: see ``server.server_address``). It answers requests
    whose ``Host`` is ``host``, the address bound, ``localhost`` or one of ``allow_hosts`` (``*``: any host)."""
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} on {host} is in use; stop the other server, or pick another --port") from None
        raise
    server.service, server.verbose = service, verbose
    server.allowed_hosts = {name.lower() for name in (host, server.server_address[0], "localhost", *allow_hosts)}
    return server


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *, verbose: bool = True,
          allow_hosts: list[str] = ()) -> None:
    """Run until interrupted (Ctrl-C); ``verbose`` logs every request (see :func:`make_server` for the rest).

    The port is bound first (one in use fails at once), then the model is built, and only then is the address
    announced: the first query does not wait seconds for the network."""
    server = make_server(service, host, port, verbose=verbose, allow_hosts=allow_hosts)
    address, bound_port = server.server_address[:2]
    try:
        _ = service.backbone.model  # build the network now, not on the first query
        log.info("serving %s indexed images on http://%s:%d/  (Ctrl-C stops)", f"{len(service.index):,}", address,
                 bound_port)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
