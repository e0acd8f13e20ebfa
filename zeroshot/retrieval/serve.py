"""``zeroshot serve``: a small HTTP search service over an Index (stdlib ``ThreadingHTTPServer``).

    GET  /                       the search page
    GET  /api/info               what is indexed
    GET  /api/search?text=T&k=N  text -> images
    GET  /api/search?id=I&k=N    image -> images for an indexed image (itself left out)
    POST /api/search?k=N         image -> images; the request body is an image file (at most ``max_upload`` bytes)
    GET  /images/<id>            an indexed image file

Only files of indexed ids are served, and only when their real path (symlinks resolved) lies under a folder the
index was built from. Errors are JSON ``{"error": "..."}`` with status 400, 403, 404, 411 or 413.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..images import IMAGE_EXTENSIONS
from .index import Index
from .page import PAGE
from .search import Hit, search_ids, search_images, search_text

log = logging.getLogger(__name__)

MAX_UPLOAD = 8 << 20
MAX_K = 100
MAX_TEXT = 1000


class ApiError(Exception):
    """A request the service refuses: an HTTP status and a message saying what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SearchService:
    """What the HTTP layer calls: queries to JSON-ready dicts, ids to servable files."""

    def __init__(self, index: Index, backbone, *, max_upload: int = MAX_UPLOAD, templates: list[str] | None = None):
        index.check_fingerprint(backbone.fingerprint)
        self.index, self.backbone, self.max_upload, self.templates = index, backbone, max_upload, templates
        self._lock = threading.Lock()  # one encoder, built on first use: queries take turns with it

    def info(self) -> dict:
        index = self.index
        return {"n": len(index), "factory": index.factory, "params": index.params, "fingerprint": index.fingerprint,
                "backbone": index.backbone, "has_images": index.paths is not None}

    def search(self, query: dict[str, str], upload: bytes | None = None) -> dict:
        k = self._k(query.get("k", "10"))
        if upload is not None:
            if not upload:
                raise ApiError(400, "empty upload: send an image file as the request body")
            with self._lock:
                hits = self._run(search_images, self.index, self.backbone, [upload], k)
            return self._answer({"image": "upload"}, k, hits)
        if "id" in query:
            hits = self._run(search_ids, self.index, [query["id"]], k)
            return self._answer({"id": query["id"]}, k, hits)
        text = query.get("text", "").strip()
        if not text:
            raise ApiError(400, "empty query: give ?text=some words, ?id=an indexed id, or POST an image")
        if len(text) > MAX_TEXT:
            raise ApiError(400, f"query too long ({len(text)} characters, at most {MAX_TEXT})")
        with self._lock:
            hits = self._run(search_text, self.index, self.backbone, [text], k, self.templates)
        return self._answer({"text": text}, k, hits)

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
    def _run(function, *args) -> list[Hit]:
        try:
            return function(*args)[0]
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    def _answer(self, query: dict, k: int, hits: list[Hit]) -> dict:
        return {"query": query, "k": k, "results": [
            {"id": h.id, "score": h.score, "image": f"/images/{quote(str(h.id), safe='')}" if h.path else None}
            for h in hits]}

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
        if not any(real.is_relative_to(root) for root in self.index.roots):
            raise ApiError(403, f"the file of {image_id!r} lies outside the indexed folders")
        if real.suffix.lower() not in IMAGE_EXTENSIONS or not real.is_file():
            raise ApiError(404, f"the image file of {image_id!r} is missing")
        return real


class _Handler(BaseHTTPRequestHandler):
    server_version = "zeroshot"
    protocol_version = "HTTP/1.1"

    @property
    def service(self) -> SearchService:
        return self.server.service

    def do_GET(self) -> None:
        self._respond(self._get)

    def do_POST(self) -> None:
        self._respond(self._post)

    def _respond(self, route) -> None:
        try:
            route(urlsplit(self.path))
        except ApiError as exc:
            self._json(exc.status, {"error": exc.message})
        except Exception as exc:  # a bug, not a bad query: say so in JSON, keep the trace in the server log
            traceback.print_exc()
            self._json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _get(self, url) -> None:
        if url.path == "/":
            self._send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(200, self.service.info())
        elif url.path == "/api/search":
            self._json(200, self.service.search(self._query(url.query)))
        elif url.path.startswith("/images/"):
            path = self.service.image_file(unquote(url.path[len("/images/"):]))
            self._send(200, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        else:
            raise ApiError(404, f"nothing at {url.path}")

    def _post(self, url) -> None:
        if url.path != "/api/search":
            self.close_connection = True  # the body stays unread
            raise ApiError(404, f"nothing to POST to at {url.path}")
        self._json(200, self.service.search(self._query(url.query), self._body()))

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
        return self.rfile.read(int(length))

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(text, keep_blank_values=True).items()}

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A bound, not yet running server (port 0 picks a free one: see ``server.server_address``)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.service, server.verbose = service, verbose
    return server


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *, verbose: bool = True) -> None:
    """Run until interrupted (Ctrl-C)."""
    server = make_server(service, host, port, verbose=verbose)
    address, bound_port = server.server_address[:2]
    log.info("serving %s indexed images on http://%s:%d/  (Ctrl-C stops)", f"{len(service.index):,}", address,
             bound_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
