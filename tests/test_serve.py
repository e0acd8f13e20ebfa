"""The search service on a tiny real index (50 held-out Flickr8k images, default model): JSON API answers and
refusals (empty query, huge upload, ../ paths, files outside the indexed folders), an end-to-end run in headless
Chromium driven by Playwright, and text->image recall through the index."""
import csv
import http.client
import json
import shutil
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from zeroshot import Index, extract, load_backbone
from zeroshot.retrieval.search import text_features, text_to_image_recall
from zeroshot.retrieval.serve import ApiError, SearchService, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_UPLOAD = 1 << 20


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    """(backbone, index, captions per image path) for the last 50 Flickr8k images by id (held out from training)."""
    folder = shared("flickr8k_1k")
    captions: dict[str, list[str]] = {}
    with open(folder / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"])
    names = sorted(captions)[-50:]
    backbone = load_backbone("default", device="cpu")
    paths = [str(folder / "images" / n) for n in names]
    images = extract(backbone, paths, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return backbone, Index.build(images), {p: captions[n] for p, n in zip(paths, names)}


@pytest.fixture(scope="module")
def server(flickr):
    backbone, index, _ = flickr
    httpd = make_server(SearchService(index, backbone, max_upload=MAX_UPLOAD), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


def request(address, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) for a raw request: paths go out exactly as written (no ../ clean-up)."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
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


def test_image_queries_by_id_and_by_upload(server, flickr):
    _, index, _ = flickr
    first = str(index.ids[0])
    status, data = api(server, "/api/search?k=5&id=" + urllib.parse.quote(first))
    assert status == 200 and len(data["results"]) == 5 and first not in [r["id"] for r in data["results"]]
    status, data = api(server, "/api/search?k=3", Path(first).read_bytes())
    assert status == 200 and data["results"][0]["id"] == first and data["results"][0]["score"] > 0.99


@pytest.mark.parametrize("path, status, message", [
    ("/api/search?text=", 400, "empty query"),
    ("/api/search?text=%20%20&k=5", 400, "empty query"),
    ("/api/search", 400, "empty query"),
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


def test_browser_search_then_click_a_thumbnail(server):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; scripts/test.sh does this)")
    from playwright.sync_api import sync_playwright

    url = f"http://{server[0]}:{server[1]}/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.fill("#k", "6")
            page.fill("#q", "a dog running on grass")
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('#results .hit').length === 6")
            page.wait_for_function("[...document.querySelectorAll('#results img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)")
            assert "6 results for" in page.inner_text("#status")
            assert all(float(s) > -1 for s in page.locator(".score").all_inner_texts())
            clicked = page.locator("#results .hit").nth(1)
            clicked_id = clicked.get_attribute("data-id")
            clicked.click()
            page.wait_for_function("id => document.getElementById('status').textContent.includes('similar to ' + id)",
                                   arg=clicked_id)
            ids = [fig.get_attribute("data-id") for fig in page.locator("#results .hit").all()]
            assert len(ids) == 6 and clicked_id not in ids
        finally:
            browser.close()


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
