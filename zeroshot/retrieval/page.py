"""The one HTML page of ``zeroshot serve``: a query box, an image upload, thumbnails with scores; clicking a
thumbnail searches by that image. Plain HTML + fetch(), no external resources; results are inserted as text
nodes (ids and paths are never parsed as HTML)."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>zeroshot search</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 1.5rem; color: #222; }
  form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; }
  #q { flex: 1 1 24rem; padding: .45rem; font-size: 1rem; }
  #k { width: 4rem; padding: .4rem; }
  #status { color: #555; min-height: 1.2em; }
  #status.error { color: #b00020; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .8rem; }
  .hit { margin: 0; cursor: pointer; border: 1px solid #ddd; border-radius: 6px; padding: .3rem; }
  .hit:hover { border-color: #1a73e8; }
  .hit img, .hit .noimage { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #f2f2f2; }
  .hit figcaption { font-size: 12px; overflow-wrap: anywhere; }
  .score { font-weight: 600; }
</style>
</head>
<body>
<h1>zeroshot search</h1>
<form id="form">
  <input id="q" name="text" placeholder="a dog running on grass" autocomplete="off" autofocus>
  <label>k <input id="k" type="number" min="1" max="100" value="12"></label>
  <button id="go" type="submit">Search</button>
  <label>or by image <input id="file" type="file" accept="image/*"></label>
</form>
<p id="status"></p>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);

function show(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function render(data, label) {
  const box = $("results");
  box.replaceChildren();
  for (const hit of data.results) {
    const fig = document.createElement("figure");
    fig.className = "hit";
    fig.dataset.id = hit.id;
    fig.title = "search by this image";
    let picture;
    if (hit.image) {
      picture = document.createElement("img");
      picture.src = hit.image;
      picture.alt = String(hit.id);
    } else {
      picture = document.createElement("div");
      picture.className = "noimage";
    }
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(score, " " + hit.id);
    fig.append(picture, caption);
    fig.addEventListener("click", () => searchBy("id=" + encodeURIComponent(hit.id), "similar to " + hit.id));
    box.append(fig);
  }
  show(data.results.length + " results " + label);
}

async function run(url, options, label) {
  show("searching…");
  try {
    const response = await fetch(url, options);
    const data = await response.json();
    if (!response.ok) { show(data.error || response.statusText, true); return; }
    render(data, label);
  } catch (err) {
    show("request failed: " + err, true);
  }
}

function searchBy(query, label) {
  return run("/api/search?" + query + "&k=" + encodeURIComponent($("k").value), {}, label);
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value;
  searchBy("text=" + encodeURIComponent(text), "for \\u201c" + text + "\\u201d");
});

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) run("/api/search?k=" + encodeURIComponent($("k").value), {method: "POST", body: file}, "similar to " + file.name);
});
</script>
</body>
</html>
"""
