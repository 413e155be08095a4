// shitu's web page: plain JavaScript on the /v1 API, no libraries, works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, answer: null, label: null, offset: 0, idsByPath: new Map() };
const PAGE = 60;  // gallery photos fetched at a time

// -- talking to the API --------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || `${response.status} ${response.statusText}`);
  return body;
}

// Changes need the server's token when it has one: asked once, kept in this tab (sessionStorage).
async function write(path, options) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const token = sessionStorage.getItem("shitu-token");
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    try {
      return await api(path, { ...options, headers });
    } catch (error) {
      if (error.status !== 401 && error.status !== 403) throw error;
      if (!(await askToken(error.status === 403))) throw new ApiError(error.status, "no token given: nothing was changed");
    }
  }
  throw new ApiError(403, "the token was refused: nothing was changed");
}

function askToken(refused) {
  const dialog = $("token-dialog");
  $("token-error").hidden = !refused;
  $("token-input").value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const token = $("token-input").value.trim();
      if (dialog.returnValue === "ok" && token) {
        sessionStorage.setItem("shitu-token", token);
        resolve(true);
      } else resolve(false);
    }, { once: true });
  });
}

function toast(message, isError = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, isError ? 7000 : 3500);
}

async function busy(button, work) {
  button.disabled = true;
  try { return await work(); } catch (error) { toast(error.message, true); } finally { button.disabled = false; }
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value; else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function thumbnail(id, alt) {
  return id === undefined ? element("div", { class: "thumb-missing", title: "photo not found" })
    : element("img", { src: `/v1/images/${id}/thumbnail`, alt, loading: "lazy" });
}

// -- the index summary and the label list ------------------------------------------------------------
let labelCounts = {};

async function refreshSummary() {
  const info = await api("/v1/info");
  const model = info.model ? `${info.model.name} ${info.model.version}` : "";
  $("summary").textContent = `${info.count} photos of ${info.labels} labels · ${model}`;
  return info;
}

async function refreshLabels() {
  labelCounts = await api("/v1/labels");
  const names = $("label-names");
  names.replaceChildren(...Object.keys(labelCounts).map((name) => element("option", { value: name })));
  drawLabelList();
  await refreshSummary();
}

function drawLabelList() {
  const filter = $("label-filter").value.trim().toLowerCase();
  const items = Object.entries(labelCounts).filter(([name]) => name.toLowerCase().includes(filter));
  $("label-list").replaceChildren(...items.map(([name, count]) => element("li", {},
    element("button", { type: "button", "aria-current": String(name === state.label), onclick: () => openLabel(name) },
      element("span", {}, name), element("span", { class: "count" }, String(count))))));
  if (!items.length) $("label-list").append(element("li", { class: "hint" }, "no labels"));
}

// -- recognising a photo ---------------------------------------------------------------------------
async function recognise(file) {
  state.file = file;
  const preview = $("query-preview");
  preview.onerror = () => { preview.hidden = true; };  // not a picture the browser can show either
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop").classList.add("has-photo");
  $("drop-text").textContent = "drop or click for another photo";
  showVerdict("idle", "Recognising…", "looking", "");
  const form = new FormData();
  form.append("images", file);
  try {
    const [answer] = await api(`/v1/query?topk=${$("topk").value}&threshold=-1`, { method: "POST", body: form });
    state.answer = answer;
    await learnIds(answer.results.map((match) => match.label));
    drawAnswer();
    $("add-query-form").hidden = false;
  } catch (error) {
    state.answer = null;
    $("matches").replaceChildren();
    $("add-query-form").hidden = true;
    showVerdict("failed", "Could not read this photo", error.message, "Choose another photo: JPEG, PNG, WebP, GIF, BMP or TIFF.");
  }
}

// Query answers name gallery photos by path; thumbnails are fetched by row id, so learn the ids.
async function learnIds(labels) {
  for (const label of new Set(labels)) {
    for (let offset = 0; ; offset += 1000) {
      const rows = await api(`/v1/images?label=${encodeURIComponent(label)}&offset=${offset}&limit=1000`);
      rows.forEach((row) => state.idsByPath.set(row.path, row.id));
      if (rows.length < 1000) break;
    }
  }
}

function showVerdict(kind, caption, label, score) {
  $("verdict").className = `verdict ${kind}`;
  $("verdict-caption").textContent = caption;
  $("top-label").textContent = label;
  $("top-score").textContent = score;
}

function drawAnswer() {
  const answer = state.answer;
  if (!answer) return;
  const threshold = Number($("threshold").value);
  const best = answer.results[0];
  if (!best) showVerdict("unknown", "Answer", "unknown", "the gallery is empty");
  else if (best.score >= threshold) showVerdict("known", "Best match", best.label, `score ${best.score.toFixed(4)}`);
  else showVerdict("unknown", "Answer", "unknown", `best score ${best.score.toFixed(4)} (${best.label}) is below the threshold`);
  $("matches").replaceChildren(...answer.results.map((match) => element("li",
    { class: `match${match.score < threshold ? " below" : ""}` },
    element("span", { class: "rank" }, String(match.rank)),
    thumbnail(state.idsByPath.get(match.path), match.label),
    element("div", {},
      element("div", { class: "name" }, match.label),
      element("div", { class: "score" }, `score ${match.score.toFixed(4)}`),
      element("div", { class: "bar" }, element("span", { style: `width: ${Math.max(0, match.score) * 100}%` })),
      element("div", { class: "path" }, match.path)))));
}

function setThreshold(value) {
  $("threshold").value = value;
  $("threshold-value").textContent = Number(value).toFixed(3);
  drawAnswer();
}

// -- browsing and changing the gallery ------------------------------------------------------------------
async function openLabel(name) {
  state.label = name;
  state.offset = 0;
  $("label-title").textContent = name;
  $("label-actions").hidden = false;
  $("photo-grid").replaceChildren();
  drawLabelList();
  await morePhotos();
}

async function morePhotos() {
  const name = state.label;
  const rows = await api(`/v1/images?label=${encodeURIComponent(name)}&offset=${state.offset}&limit=${PAGE}`);
  if (name !== state.label) return;
  state.offset += rows.length;
  $("photo-grid").append(...rows.map(photoCard));
  const total = labelCounts[name] || 0;
  $("label-count").textContent = `${total} photo${total === 1 ? "" : "s"}`;
  $("more-photos").hidden = state.offset >= total;
}

function photoCard(row) {
  const remove = element("button", { type: "button", class: "danger", title: `remove image ${row.id} from the index` }, "Remove");
  remove.addEventListener("click", () => busy(remove, async () => {
    if (!confirm(`Remove this photo (id ${row.id}) from the index?`)) return;
    await write(`/v1/images/${row.id}`, { method: "DELETE" });
    toast(`removed photo ${row.id} from ${row.label}`);
    await afterChange(row.label);
  }));
  return element("figure", { class: "photo", "data-id": String(row.id) }, thumbnail(row.id, row.path),
    element("figcaption", { class: "caption" }, element("span", { title: row.path }, row.path.split("/").pop()), remove));
}

async function addPhotos(files, label) {
  const form = new FormData();
  for (const file of files) form.append("images", file);
  form.append("label", label);
  const report = await write("/v1/images", { method: "POST", body: form });
  const stored = report.images.length ? report.images[0].label : label;
  const parts = [`${report.added} added`];
  if (report.unchanged) parts.push(`${report.unchanged} already there`);
  if (report.bad.length) parts.push(`${report.bad.length} unreadable`);
  toast(`${stored}: ${parts.join(", ")}`);
  await afterChange(stored);
  return stored;
}

async function afterChange(label) {
  await refreshLabels();
  if (label in labelCounts) await openLabel(label);
  else {
    state.label = null;
    $("label-title").textContent = "Choose a label";
    $("label-count").textContent = "";
    $("label-actions").hidden = true;
    $("photo-grid").replaceChildren();
    $("more-photos").hidden = true;
    drawLabelList();
  }
  if (state.file) await recognise(state.file);  // the answer reflects the change at once
}

// -- wiring -----------------------------------------------------------------------------------------------
function showTab(name) {
  for (const tab of ["recognise", "gallery"]) {
    $(tab).hidden = tab !== name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
  }
}

function wire() {
  document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => showTab(button.dataset.tab)));
  $("query-file").addEventListener("change", (event) => { if (event.target.files[0]) recognise(event.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) recognise(file);
  });
  $("threshold").addEventListener("input", (event) => setThreshold(event.target.value));
  $("topk").addEventListener("change", () => { if (state.file) recognise(state.file); });
  $("add-query-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("add-query-button"), async () => {
      await addPhotos([state.file], $("add-query-label").value);
      $("add-query-label").value = "";
    });
  });
  $("label-filter").addEventListener("input", drawLabelList);
  $("more-photos").addEventListener("click", () => busy($("more-photos"), morePhotos));
  $("add-files").addEventListener("change", (event) => {
    const files = [...event.target.files];
    event.target.value = "";
    if (files.length) busy($("remove-label"), () => addPhotos(files, state.label));
  });
  $("new-label-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("new-label-button"), async () => {
      await addPhotos([...$("new-label-files").files], $("new-label-name").value);
      event.target.reset();
    });
  });
  $("remove-label").addEventListener("click", () => busy($("remove-label"), async () => {
    const name = state.label;
    if (!confirm(`Remove the label "${name}" and all its ${labelCounts[name]} photos from the index?`)) return;
    await write(`/v1/labels/${encodeURIComponent(name)}`, { method: "DELETE" });
    toast(`removed the label ${name}`);
    await afterChange(name);
  }));
}

async function start() {
  wire();
  try {
    const info = await refreshSummary();
    if (typeof info.threshold === "number") {
      setThreshold(Math.max(0, Math.min(1, info.threshold)));
      $("threshold-hint").textContent = "Starts at the threshold calibrated for this index; below it a photo is unknown.";
    } else setThreshold(0);
    await refreshLabels();
  } catch (error) {
    toast(`cannot read the index: ${error.message}`, true);
  }
}

start();
