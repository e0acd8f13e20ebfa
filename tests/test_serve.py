"""The search service on a tiny real index (50 held-out Flickr8k images with their captions, default model): JSON
API answers and refusals (empty query, huge upload, ../ paths, files outside the indexed folders, foreign Host
headers, odd methods), thumbnails, clients that hang up, the page in headless Chromium driven by Playwright (search,
the query in the address, captions, the upload preview, keyboard focus, near-duplicate hiding), and text->image
recall through the index."""
import contextlib
import csv
import http.client
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zeroshot
from conftest import shared
from zeroshot import Index, extract, load_backbone
from zeroshot.retrieval.search import (
    DEDUP_COSINE,
    add_captions,
    image_features,
    read_captions,
    text_features,
    text_to_image_recall,
)
from zeroshot.retrieval.serve import THUMBNAIL_PX, ApiError, SearchService, make_server, public_name, thumbnail

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_UPLOAD = 1 << 20


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    """(backbone, index, captions per image path) for the last 50 Flickr8k images by id (held out from training);
    the index holds their captions, matched by file name from Flickr8k's captions.csv."""
    folder = shared("flickr8k_1k")
    captions: dict[str, list[str]] = {}
    with open(folder / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"])
    names = sorted(captions)[-50:]
    backbone = load_backbone("default", device="cpu")
    paths = [str(folder / "images" / n) for n in names]
    images = extract(backbone, paths, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    index = Index.build(images)
    assert add_captions(index, backbone, *read_captions(folder / "captions.csv")) == 250
    return backbone, index, {p: captions[n] for p, n in zip(paths, names)}


@contextlib.contextmanager
def running(service: SearchService, **options):
    """The (host, port) of a server over ``service`` on a free port, shut down afterwards."""
    httpd = make_server(service, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[:2]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def service(flickr, tmp_path_factory):
    backbone, index, _ = flickr
    return SearchService(index, backbone, max_upload=MAX_UPLOAD, thumbnails=tmp_path_factory.mktemp("thumbnails"))


@pytest.fixture(scope="module")
def server(service):
    with running(service) as address:
        yield address


def request(address, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) for a raw request: paths go out exactly as written (no ../ clean-up); a ``Host`` in
    ``headers`` replaces the usual one."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders(body)
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def api(address, path: str, body: bytes | None = None):
    headers = {"Content-Length": str(len(body))} if body is not None else {}
    status, _, data = request(address, "POST" if body is not None else "GET", path, body, headers)
    return status, json.loads(data)


def test_text_query_returns_sorted_scored_thumbnails(server, flickr):
    status, data = api(server, "/api/search?text=" + urllib.parse.quote("a dog running on grass") + "&k=7")
    assert status == 200 and data["query"] == {"text": "a dog running on grass"}
    scores = [r["score"] for r in data["results"]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
    status, headers, body = request(server, "GET", data["results"][0]["image"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == Path(data["results"][0]["id"]).read_bytes()
    assert data["results"][0]["captions"] == [c.strip() for c in flickr[2][data["results"][0]["id"]]]


def test_image_queries_by_id_and_by_upload(server, flickr):
    _, index, _ = flickr
    first = str(index.ids[0])
    status, data = api(server, "/api/search?k=5&id=" + urllib.parse.quote(first))
    assert status == 200 and len(data["results"]) == 5 and first not in [r["id"] for r in data["results"]]
    status, data = api(server, "/api/search?k=3", Path(first).read_bytes())
    assert status == 200 and data["results"][0]["id"] == first and data["results"][0]["score"] > 0.99


@pytest.mark.parametrize("path, status, message", [
    ("/api/search?text=", 400, "Nothing to search for: type some words"),
    ("/api/search?text=%20%20&k=5", 400, "Nothing to search for"),
    ("/api/search", 400, "Nothing to search for"),
    ("/api/search?text=dog&dedup=maybe", 400, "dedup must be 1 or 0"),
    ("/api/search?text=dog&k=0", 400, "k must be a whole number"),
    ("/api/search?text=dog&k=many", 400, "k must be a whole number"),
    ("/api/search?text=dog&k=100000", 400, "k must be a whole number"),
    ("/api/search?id=nope.jpg", 404, "not in the index"),
    ("/api/nothing", 404, "nothing at"),
])
def test_bad_queries_get_json_errors(server, path, status, message):
    got, data = api(server, path)
    assert got == status and message in data["error"]


def test_uploads_are_limited_and_checked(server):
    status, _, body = request(server, "POST", "/api/search", headers={"Content-Length": str(10**9)})
    assert status == 413 and "larger than the 1,048,576 allowed" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/api/search")
    assert status == 411 and "Content-Length" in json.loads(body)["error"]
    status, data = api(server, "/api/search", b"")
    assert status == 400 and "empty upload" in data["error"]
    status, data = api(server, "/api/search", b"GIF89a not really")
    assert status == 400 and "not a decodable image" in data["error"]


@pytest.mark.parametrize("path", [
    "/images/../../../../etc/passwd",
    "/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/images/%2Fetc%2Fpasswd",
    "/../../etc/passwd",
    "/images/",
])
def test_paths_outside_the_index_are_not_served(server, path):
    status, headers, body = request(server, "GET", path)
    assert status == 404 and headers["Content-Type"] == "application/json" and b"root:" not in body


def test_files_outside_the_indexed_folders_are_refused(flickr, tmp_path):
    backbone, index, _ = flickr
    secret = tmp_path / "secret" / "photo.jpg"
    secret.parent.mkdir()
    shutil.copy(index.ids[0], secret)
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "link.jpg").symlink_to(secret)  # inside the indexed folder, pointing out of it
    (tmp_path / "public" / "real.jpg").write_bytes(secret.read_bytes())
    escaping = Index(index.dim, fingerprint=index.fingerprint)
    escaping.add(index.vectors(index.ids[:2]), ["link", "real"],
                 paths=[tmp_path / "public" / "link.jpg", tmp_path / "public" / "real.jpg"])
    service = SearchService(escaping, backbone)
    assert service.image_file("real") == (tmp_path / "public" / "real.jpg").resolve()
    with pytest.raises(ApiError, match="outside the indexed folders") as refused:
        service.image_file("link")
    assert refused.value.status == 403


def test_page_is_served(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'id="q"' in body


def test_thumbnails_are_small_cached_on_disk_and_cacheable(server, service, flickr, tmp_path):
    _, index, _ = flickr
    large = next(str(i) for i in index.ids if max(Image.open(i).size) > THUMBNAIL_PX)
    name = urllib.parse.quote(large, safe="")
    status, headers, body = request(server, "GET", f"/thumbnails/{name}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "max-age=86400"
    with Image.open(io.BytesIO(body)) as thumb:
        assert max(thumb.size) == THUMBNAIL_PX and len(body) < Path(large).stat().st_size
    cached = set(service.thumbnails.iterdir())
    assert request(server, "GET", f"/thumbnails/{name}")[2] == body and set(service.thumbnails.iterdir()) == cached
    status, headers, body = request(server, "HEAD", f"/thumbnails/{name}")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert request(server, "GET", f"/images/{name}")[1]["Cache-Control"] == "max-age=86400"
    picture = tmp_path / "a.jpg"  # a changed file gets a new thumbnail
    Image.new("RGB", (600, 300), "red").save(picture)
    first = thumbnail(picture, tmp_path / "thumbs")
    Image.new("RGB", (600, 300), "blue").save(picture)
    os.utime(picture, ns=(picture.stat().st_atime_ns, picture.stat().st_mtime_ns + 10**9))
    assert Image.open(first).size == (256, 128) and thumbnail(picture, tmp_path / "thumbs") != first
    Image.new("RGB", (200, 150), "red").save(tmp_path / "small.jpg")  # a small JPEG is its own thumbnail
    assert thumbnail(tmp_path / "small.jpg", tmp_path / "thumbs") == tmp_path / "small.jpg"


def test_every_error_is_json_whatever_the_method(server):
    for method, path, status in [("PUT", "/", 405), ("DELETE", "/api/search", 405), ("PATCH", "/api/info", 405),
                                 ("POST", "/", 405), ("OPTIONS", "/", 501), ("GET", "/nothing", 404)]:
        got, headers, body = request(server, method, path)
        assert got == status and headers["Content-Type"] == "application/json" and json.loads(body)["error"]
        assert status != 405 or headers["Allow"] == "GET, HEAD, POST"
    with socket.create_connection(server) as sock:  # a request line past the 64 KiB the HTTP layer reads
        sock.sendall(b"GET /" + b"a" * 65_600 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = sock.makefile("rb").read()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414") and b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "URI is too long"}
    status, headers, body = request(server, "HEAD", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and body == b""
    status, headers, body = request(server, "HEAD", "/nothing")
    assert status == 404 and headers["Content-Type"] == "application/json" and body == b""


@pytest.mark.parametrize("host, status", [
    ("evil.example", 403), ("evil.example:8000", 403), ("", 403), ("127.0.0.1.evil.example", 403),
    ("localhost:1234", 200), ("127.0.0.1", 200), ("LocalHost", 200),
])
def test_the_host_header_must_name_this_server(server, host, status):
    got, _, body = request(server, "GET", "/api/info", headers={"Host": host})
    assert got == status and (status == 200 or "--allow-host" in json.loads(body)["error"])


def test_more_host_names_can_be_allowed(service):
    with running(service, allow_hosts=["box.lan"]) as address:
        assert request(address, "GET", "/api/info", headers={"Host": "box.lan:80"})[0] == 200
        assert request(address, "GET", "/api/info", headers={"Host": "evil.example"})[0] == 403
    with running(service, allow_hosts=["*"]) as address:
        assert request(address, "GET", "/api/info", headers={"Host": "evil.example"})[0] == 200


def test_info_names_no_path_on_the_server(server):
    status, data = api(server, "/api/info")
    assert status == 200 and data["n"] == 50 and data["captions"] == 250
    for secret in (str(shared("flickr8k_1k")), str(Path(zeroshot.__file__).parent)):
        assert secret not in json.dumps(data)
    assert public_name("local-dir:/home/me/models/m") == "local-dir:m" and public_name("/srv/m") == "m"
    assert public_name("ViT-B-32/openai") == "ViT-B-32/openai"


def hang_up(address, data: bytes) -> None:
    """Send ``data``, then reset the connection (SO_LINGER 0) before any answer is read."""
    with socket.create_connection(address) as sock:
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_clients_that_hang_up_leave_no_traceback_and_quiet_logs_nothing(service, flickr, capsys, caplog):
    image = urllib.parse.quote(str(flickr[1].ids[0]), safe="")
    requests = [f"GET /images/{image} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
                b"POST /api/search HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + b"\xff\xd8" * 100,
                b"GET /api/search?text=dog&k=50 HTTP/1.1\r\nHost: localhost\r\n\r\n",
                b""]
    before = set(threading.enumerate())
    with running(service, verbose=True) as address:
        for i in range(40):
            hang_up(address, requests[i % len(requests)])
        deadline = time.monotonic() + 60
        while any("process_request" in t.name for t in set(threading.enumerate()) - before):  # handlers at work
            assert time.monotonic() < deadline, "the server still handles the dropped connections"
            time.sleep(0.05)
        status, _, _ = request(address, "GET", "/api/info")
    err = capsys.readouterr().err
    assert status == 200 and '"GET /api/info HTTP/1.1" 200' in err  # the request log is on, and the server well
    assert "Traceback" not in err and '" 500 ' not in err and not [r for r in caplog.records if r.levelno >= 40]
    with running(service) as address:  # not verbose (`serve --quiet`): no request log
        request(address, "GET", "/api/info")
    assert capsys.readouterr().err == ""


# --- the page in headless Chromium -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    yield page
    page.close()


def url(address) -> str:
    return f"http://{address[0]}:{address[1]}/"


def query_of(address: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(address).query)


def shown(page, n: int) -> list[str]:
    """The ids of the n results once a search has finished and every thumbnail has loaded."""
    page.wait_for_function("n => document.querySelectorAll('#results .hit').length === n"
                           " && !document.getElementById('status').textContent.startsWith('searching')"
                           " && [...document.querySelectorAll('#results img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)", arg=n)
    return [fig.get_attribute("data-id") for fig in page.locator("#results .hit").all()]


def status_says(page, text: str) -> None:
    page.wait_for_function("text => document.getElementById('status').textContent.includes(text)", arg=text)


def test_browser_search_then_click_a_thumbnail(server, page):
    page.goto(url(server))
    status_says(page, "Search 50 images. Type what you are looking for")
    page.click("#go")  # nothing typed: a hint, no request
    status_says(page, "Type what you are looking for")
    page.fill("#k", "6")
    page.fill("#q", "a dog running on grass")
    page.click("#go")
    shown(page, 6)
    assert "6 results for" in page.inner_text("#status")
    assert all(float(s) > -1 for s in page.locator(".score").all_inner_texts())
    clicked = page.locator("#results .hit").nth(1)
    clicked_id = clicked.get_attribute("data-id")
    clicked.locator("img").click()
    status_says(page, "similar to " + clicked_id)
    assert clicked_id not in shown(page, 6)
    assert query_of(page.url) == {"id": [clicked_id], "k": ["6"]}


def test_browser_keeps_the_query_in_the_address(server, page):
    page.goto(url(server) + "?q=a+dog+running+on+grass&k=5")
    dogs = shown(page, 5)
    assert page.input_value("#q") == "a dog running on grass" and page.input_value("#k") == "5"
    page.fill("#q", "a girl in a pink dress")
    page.click("#go")
    status_says(page, "pink dress")
    girls = shown(page, 5)
    assert girls != dogs and query_of(page.url) == {"q": ["a girl in a pink dress"], "k": ["5"]}
    page.go_back()
    status_says(page, "a dog running")
    assert shown(page, 5) == dogs and page.input_value("#q") == "a dog running on grass"
    page.go_forward()
    status_says(page, "pink dress")
    assert shown(page, 5) == girls
    page.reload()
    status_says(page, "pink dress")
    assert shown(page, 5) == girls


def test_browser_shows_captions_and_matches_them_when_asked(server, page, flickr):
    captions = flickr[2]
    page.goto(url(server) + "?q=a+little+girl+climbing&k=4")
    cards = page.locator("#results .hit")
    for i, image in enumerate(shown(page, 4)):
        assert cards.nth(i).locator(".caption").inner_text() == captions[image][0].strip()
        assert cards.nth(i).locator("img").get_attribute("alt") == captions[image][0].strip()
        assert cards.nth(i).locator("summary").inner_text() == "4 more captions"
    page.check("#captions")
    status_says(page, "captions matched")
    ids = shown(page, 4)
    assert query_of(page.url) == {"q": ["a little girl climbing"], "k": ["4"], "captions": ["1"]}
    matched = page.locator(".caption.matched").all_inner_texts()
    assert len(matched) == 4 and all(text in [c.strip() for c in captions[i]] for text, i in zip(matched, ids))


def test_browser_previews_the_uploaded_image(server, page, flickr):
    upload = Path(flickr[1].ids[3])
    page.goto(url(server))
    page.fill("#q", "words typed before")
    page.set_input_files("#file", str(upload))
    status_says(page, "similar to " + upload.name)
    assert shown(page, 12)[0] == str(upload)  # the indexed image itself comes first
    assert page.is_visible("#preview") and page.evaluate("document.getElementById('preview').naturalWidth") > 0
    assert page.get_attribute("#preview", "alt") == "query image " + upload.name
    assert page.input_value("#q") == "" and page.get_attribute("#q", "placeholder") == "image: " + upload.name


def test_browser_result_cards_take_keyboard_focus(server, page):
    page.goto(url(server) + "?q=a+dog&k=3")
    ids = shown(page, 3)
    assert page.get_attribute("link[rel=icon]", "href").startswith("data:image/svg+xml")
    assert all(page.locator("#results img").evaluate_all("images => images.map(img => img.alt)"))
    page.focus("#file")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.closest('.hit').dataset.id") == ids[0]
    assert page.evaluate("getComputedStyle(document.activeElement.closest('.hit')).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    status_says(page, "similar to " + ids[0])
    assert ids[0] not in shown(page, 3)


@pytest.fixture(scope="module")
def duplicated(flickr, tmp_path_factory):
    """(address, original, copy): a server over the 50 images and a re-encoded copy of the first, a near-duplicate."""
    backbone, index, _ = flickr
    original, copy = str(index.ids[0]), tmp_path_factory.mktemp("copies") / "copy.jpg"
    Image.open(original).save(copy, quality=70)
    both = Index(index.dim, fingerprint=index.fingerprint)
    both.add(index.vectors(index.ids), index.ids, paths=index.paths)
    both.add(image_features(backbone, [copy]), [str(copy)], paths=[copy])
    assert float(both.vectors([original])[0] @ both.vectors([str(copy)])[0]) > DEDUP_COSINE
    with running(SearchService(both, backbone, thumbnails=tmp_path_factory.mktemp("thumbnails"))) as address:
        yield address, original, str(copy)


def test_browser_hides_near_duplicates(duplicated, page):
    address, original, copy = duplicated
    page.goto(url(address) + "?k=5")
    page.set_input_files("#file", original)
    status_says(page, "similar to")
    assert set(shown(page, 5)[:2]) == {original, copy}
    page.check("#dedup")
    status_says(page, "near-duplicates hidden")
    ids = shown(page, 5)
    assert ids[0] == original and copy not in ids and query_of(page.url) == {"k": ["5"], "dedup": ["1"]}


def test_flickr_held_out_text_to_image_recall_through_the_index(flickr):
    """Index recall@k equals brute force over the same features and beats chance (k/50) clearly."""
    backbone, index, captions = flickr
    texts = [c for caps in captions.values() for c in caps[:2]]  # two captions per image keep the test short
    owners = [p for p in captions for _ in range(2)]
    recall = text_to_image_recall(index, backbone, texts, owners)
    scores = text_features(backbone, texts) @ index.vectors(index.ids).T
    rows = index.positions(owners)
    rank = (scores > scores[np.arange(len(texts)), rows][:, None]).sum(axis=1)
    assert recall == pytest.approx({f"recall@{k}": float((rank < k).mean()) for k in (1, 5, 10)}, abs=0.01)
    assert recall["recall@10"] > 2 * 10 / 50


def test_a_port_in_use_is_one_clear_error(service):
    first = make_server(service, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"port \d+ on 127.0.0.1 is in use; stop the other server, or pick another"):
            make_server(service, "127.0.0.1", first.server_address[1])
    finally:
        first.server_close()
