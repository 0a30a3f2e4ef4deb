#pragma once
// The page runner serve answers at "/": one self-contained file (no CDN, no request beyond this
// server). Choose or drop an image; it is shown, sent to POST /v1/predict, and the top-5 classes
// come back as labelled bars with their probabilities and the time the prediction took. The model's
// name, input size and class count come from GET /v1/model. A real file input under a label works
// with the keyboard; results are announced (aria-live) and refusals shown as alerts.
#include <string>

namespace tessera::serve {

inline const std::string& page_html() {
    static const std::string page = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tessera: classify an image</title>
<style>
  :root { --ink: #1d2330; --soft: #5b6475; --line: #d8dce4; --bar: #3867d6; --bad: #b3261e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f6f7f9; }
  main { max-width: 760px; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
  #model { color: var(--soft); margin: 0 0 1.25rem; }
  #drop { display: block; border: 2px dashed var(--line); border-radius: 12px; background: #fff; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over, #drop:focus-within { border-color: var(--bar); outline: none; }
  #drop input { position: absolute; width: 1px; height: 1px; opacity: 0; }
  #drop .hint { color: var(--soft); font-size: .95rem; }
  #result { display: grid; grid-template-columns: minmax(0, 240px) 1fr; gap: 1.25rem; margin-top: 1.5rem; align-items: start; }
  #preview { width: 100%; border-radius: 8px; background: #e9ecf1; min-height: 120px; object-fit: contain; }
  #preview:not([src]) { visibility: hidden; }
  ol { list-style: none; margin: 0; padding: 0; }
  li { margin: 0 0 .6rem; }
  .row { display: flex; justify-content: space-between; gap: .5rem; font-size: .95rem; }
  .label { font-weight: 600; overflow-wrap: anywhere; }
  .prob { font-variant-numeric: tabular-nums; color: var(--soft); }
  .track { height: 10px; border-radius: 5px; background: #e3e7ee; overflow: hidden; }
  .fill { height: 100%; background: var(--bar); border-radius: 5px; }
  #timing { color: var(--soft); font-size: .9rem; margin-top: .5rem; }
  #error { color: var(--bad); font-weight: 600; margin-top: 1rem; }
  #error:empty { display: none; }
  @media (max-width: 560px) { #result { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<main>
  <h1>Classify an image</h1>
  <p id="model">Loading the model&hellip;</p>
  <label id="drop" for="file">
    <input id="file" type="file" accept="image/jpeg,image/png,image/gif,image/bmp">
    <strong>Choose an image</strong> or drop one here
    <div class="hint">JPEG, PNG, GIF or BMP. Press Enter or Space to choose.</div>
  </label>
  <div id="error" role="alert"></div>
  <section id="result" aria-live="polite">
    <img id="preview" alt="">
    <div>
      <ol id="top" aria-label="Most probable classes"></ol>
      <div id="timing"></div>
    </div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), file = $("file"), preview = $("preview"), top5 = $("top"), timing = $("timing"), error = $("error");
let previewUrl = null;

fetch("/v1/model").then((r) => r.json()).then((m) => {
  const input = m.input;
  $("model").textContent = `${m.arch}, ${m.classes} classes, ${input.width}\u00d7${input.height} input (${m.checkpoint})`;
}).catch(() => { $("model").textContent = "The model's description could not be read."; });

drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); }
});
for (const type of ["dragenter", "dragover"])
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const type of ["dragleave", "drop"])
  drop.addEventListener(type, () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
file.addEventListener("change", () => { if (file.files.length) classify(file.files[0]); });

async function classify(image) {
  error.textContent = "";
  top5.replaceChildren();
  timing.textContent = "Classifying\u2026";
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(image);
  preview.src = previewUrl;
  preview.alt = image.name;
  const started = performance.now();
  try {
    const response = await fetch("/v1/predict?topk=5", {
      method: "POST", body: image, headers: { "Content-Type": image.type || "application/octet-stream" } });
    const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    const elapsed = performance.now() - started;
    const server = (response.headers.get("Server-Timing") || "").match(/dur=([0-9.]+)/);
    for (const c of answer[0].top) {
      const li = document.createElement("li");
      const percent = (100 * c.prob).toFixed(1);
      li.innerHTML = `<div class="row"><span class="label"></span><span class="prob">${percent}%</span></div>` +
        `<div class="track" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${percent}">` +
        `<div class="fill" style="width:${percent}%"></div></div>`;
      li.querySelector(".label").textContent = c.label;
      li.querySelector(".track").setAttribute("aria-label", `${c.label}: ${percent}%`);
      top5.append(li);
    }
    timing.textContent = `Predicted in ${elapsed.toFixed(0)} ms` + (server ? ` (${Number(server[1]).toFixed(1)} ms on the server)` : "") + ".";
  } catch (e) {
    timing.textContent = "";
    error.textContent = `The server refused ${image.name}: ${e.message}`;
  }
}
</script>
</body>
</html>
)html";
    return page;
}

}  // namespace tessera::serve
