"""The one HTML page of ``zeroshot serve``: a query box, an image upload (previewed), toggles for caption matching
and near-duplicate hiding, thumbnails with scores and captions; a thumbnail is a link that searches by that image.
The query lives in the address (``?q=words&k=12``, ``?id=...``), so a search can be shared or reloaded and the
browser's back and forward buttons step through searches. Plain HTML + fetch(), no external resources (the icon is a
data: URL); results are inserted as text nodes (ids and captions are never parsed as HTML)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zeroshot search</title>
<link rel="icon" href="data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E%3Ccircle cx='6.5' cy='6.5' r='4.5' fill='none' stroke='%231a73e8' stroke-width='2'/%3E%3Cpath d='M10 10l4.5 4.5' stroke='%231a73e8' stroke-width='2.5' stroke-linecap='round'/%3E%3C/svg%3E">
<style>
  body { font: 15px system-ui, sans-serif; margin: 1.5rem; color: #222; }
  form { display: flex; gap: .5rem 1rem; flex-wrap: wrap; align-items: center; }
  #q { flex: 1 1 24rem; padding: .45rem; font-size: 1rem; }
  #k { width: 4rem; padding: .4rem; }
  [hidden] { display: none !important; }
  #query-image { display: flex; align-items: center; gap: .6rem; margin-top: .8rem; color: #555; }
  #query-image img { height: 72px; max-width: 144px; object-fit: cover; border-radius: 4px; }
  #status { color: #555; min-height: 1.2em; }
  #status.error { color: #b00020; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: .8rem; }
  .hit { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .3rem; }
  .hit:hover, .hit:focus-within { border-color: #1a73e8; }
  .hit:focus-within { outline: 2px solid #1a73e8; }
  .hit a { display: block; }
  .hit a:focus { outline: none; }
  .hit img, .hit .noimage { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #f2f2f2; }
  .hit figcaption { font-size: 12px; overflow-wrap: anywhere; }
  .meta { display: flex; gap: .4em; white-space: nowrap; }
  .score { font-weight: 600; }
  .id { overflow: hidden; text-overflow: ellipsis; color: #555; }
  .caption { margin: .25rem 0 0; font-size: 13px; }
  .caption.matched { font-weight: 600; }
  .hit details { color: #555; margin-top: .2rem; }
  .hit details ul { margin: .2rem 0 0; padding-left: 1.1rem; }
</style>
</head>
<body>
<h1>zeroshot search</h1>
<form id="form">
  <input id="q" type="search" placeholder="a dog running on grass" aria-label="what to look for" autocomplete="off"
         autofocus>
  <label>k <input id="k" type="number" min="1" max="100" value="12"></label>
  <label title="also rank by the captions stored with the index"><input id="captions" type="checkbox"> match
    captions</label>
  <label title="hide results that are near-duplicates of a better one"><input id="dedup" type="checkbox"> hide
    near-duplicates</label>
  <button id="go" type="submit">Search</button>
  <label>or by image <input id="file" type="file" accept="image/*"></label>
</form>
<div id="query-image" hidden><img id="preview" alt=""><span id="preview-name"></span></div>
<p id="status" role="status" aria-live="polite"></p>
<div id="results" aria-label="results"></div>
<script>
const $ = (id) => document.getElementById(id);
const HINT = "Type what you are looking for, e.g. “a dog running on grass”, or choose an image to find similar ones.";
let welcome = HINT;
let current = null;  // the query on show: {q: words}, {id: an indexed id} or {file: an uploaded File}
let latest = 0;      // answers to older requests that arrive late are dropped

function show(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showQueryImage(src, name) {
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  $("query-image").hidden = !src;
  $("q").placeholder = src ? "image: " + name : "a dog running on grass";
  if (!src) return;
  preview.hidden = false;
  preview.src = src;
  preview.alt = "query image " + name;
  $("preview-name").textContent = "similar to " + name;
  $("q").value = "";
}

function card(hit) {
  const fig = element("figure", "hit");
  fig.dataset.id = hit.id;
  const link = element("a");
  link.href = "?" + withOptions({id: hit.id});
  link.title = "find images similar to this one";
  link.addEventListener("click", (event) => { event.preventDefault(); search({id: String(hit.id)}); });
  const picture = hit.thumbnail ? element("img") : element("div", "noimage");
  if (hit.thumbnail) {
    picture.src = hit.thumbnail;
    picture.alt = hit.captions[0] || "image " + hit.id;
    picture.loading = "lazy";
  }
  link.append(picture);
  const caption = element("figcaption");
  const meta = element("div", "meta");
  meta.append(element("span", "score", hit.score.toFixed(3)), element("span", "id", String(hit.id)));
  meta.title = String(hit.id);
  caption.append(meta);
  const first = hit.caption || hit.captions[0];
  if (first) caption.append(element("p", hit.caption ? "caption matched" : "caption", first));
  const others = hit.captions.filter((text) => text !== first);
  if (others.length) {
    const more = element("details");
    const list = element("ul");
    list.append(...others.map((text) => element("li", "", text)));
    more.append(element("summary", "", others.length + " more caption" + (others.length > 1 ? "s" : "")), list);
    caption.append(more);
  }
  fig.append(link, caption);
  return fig;
}

function withOptions(query) {
  const params = new URLSearchParams(query);
  params.set("k", $("k").value);
  if ($("captions").checked) params.set("captions", "1");
  if ($("dedup").checked) params.set("dedup", "1");
  return params;
}

async function search(query, push = true) {
  current = query;
  const mine = ++latest;
  let api, label, request = {};
  if (query.file) {
    api = withOptions({});
    api.delete("captions");
    request = {method: "POST", body: query.file};
    label = "similar to " + query.file.name;
    showQueryImage(URL.createObjectURL(query.file), query.file.name);
  } else if ("id" in query) {
    api = withOptions({id: query.id});
    api.delete("captions");
    label = "similar to " + query.id;
    showQueryImage("/thumbnails/" + encodeURIComponent(query.id), query.id);
  } else {
    api = withOptions({text: query.q});
    label = "for “" + query.q + "”";
    showQueryImage(null);
  }
  if (push) {  // an upload cannot be put in the address: it keeps the options only
    const page = withOptions(query.file ? {} : "id" in query ? {id: query.id} : {q: query.q});
    history.pushState(null, "", "?" + page);
  }
  show("searching…");
  try {
    const response = await fetch("/api/search?" + api, request);
    const data = await response.json();
    if (mine !== latest) return;
    if (!response.ok) { show(data.error || response.statusText, true); return; }
    $("results").replaceChildren(...data.results.map(card));
    const notes = [data.query.captions && "captions matched", data.query.dedup && "near-duplicates hidden"];
    show(data.results.length + " results " + label + notes.filter(Boolean).map((n) => ", " + n).join(""));
  } catch (err) {
    if (mine === latest) show("request failed: " + err, true);
  }
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  $("k").value = params.get("k") || $("k").defaultValue;
  $("captions").checked = params.get("captions") === "1" && !$("captions").disabled;
  $("dedup").checked = params.get("dedup") === "1";
  $("q").value = params.get("q") || "";
  if (params.get("q")) search({q: params.get("q")}, false);
  else if (params.has("id")) search({id: params.get("id")}, false);
  else {
    current = null;
    showQueryImage(null);
    $("results").replaceChildren();
    show(welcome);
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (text) search({q: text});
  else if (current && !current.q) search(current);  // the image on show, with the options as they are now
  else show(HINT);
});
$("preview").addEventListener("error", () => { $("preview").hidden = true; });  // an id without an image file
$("file").addEventListener("change", () => { if ($("file").files[0]) search({file: $("file").files[0]}); });
for (const box of ["captions", "dedup"]) $(box).addEventListener("change", () => { if (current) search(current); });
window.addEventListener("popstate", fromAddress);

fetch("/api/info").then((response) => response.json()).then((info) => {
  welcome = "Search " + info.n.toLocaleString() + " images. " + HINT;
  if (!info.captions) {
    $("captions").disabled = true;
    $("captions").parentElement.title = "this index has no captions (zeroshot index build --captions FILE)";
  }
}).catch(() => {}).finally(fromAddress);
</script>
</body>
</html>
"""
