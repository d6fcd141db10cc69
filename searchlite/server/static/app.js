// searchlite's page: plain JavaScript, no build step, no inline code (the CSP forbids it).
"use strict";

const PAGE = 60;
const TOP_OFFSET_MAX = 10000;  // the API's cap on offset for best matches (a by-date listing has none)
const $ = (id) => document.getElementById(id);
const els = {
  form: $("search"), q: $("q"), not: $("not"), pick: $("pick"), file: $("file"), grid: $("grid"),
  status: $("status"), chips: $("chips"), sentinel: $("sentinel"), drop: $("drop"), info: $("info"),
  infoLink: $("info-link"), welcome: $("welcome"), welcomeFacts: $("welcome-facts"),
  queryChip: $("query-chip"), queryThumb: $("query-thumb"), queryClear: $("query-clear"),
  detail: $("detail"), detailImg: $("detail-img"), detailVideo: $("detail-video"), dAt: $("d-at"), dAtLabel: $("d-at-label"), dPath: $("d-path"), dScore: $("d-score"), dDims: $("d-dims"),
  dBytes: $("d-bytes"), dTags: $("d-tags"), copy: $("copy"), more: $("more"), original: $("original"),
  prev: $("prev"), next: $("next"), close: $("close"),
  sort: $("sort"), filters: $("filters"), filtersToggle: $("filters-toggle"), filtersClear: $("filters-clear"), cameras: $("cameras"),
  after: $("after"), before: $("before"), camera: $("camera"), place: $("place"), path: $("path"), type: $("type"),
  timeline: $("timeline"), verdict: $("verdict"), verdictText: $("verdict-text"), minScore: $("min-score"),
  minScoreValue: $("min-score-value"), widen: $("widen"), auto: $("auto"),
};
// the filters, as the URL and the API name them (near comes from the place box: LAT,LON[,KM])
const FILTERS = ["after", "before", "camera", "place", "near", "path", "type"];
const POINT = /^\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*)?$/;

let state = {};        // what the URL says: q, not[], tag, like, image, view, sort, min_score and the FILTERS
let hits = [];         // results shown so far, best first (by date with sort)
let slider = { key: "", min: 0, max: 1 };  // the min-score slider's range, kept while one query is refined
let exhausted = false; // the last page came back short
let loading = false;
let generation = 0;    // bumps on every new query, so late answers of an old one are dropped
let current = -1;      // the hit open in the detail view
let queryImageUrl = null;

// --- the URL holds the query ------------------------------------------------------------------

function readState() {
  const p = new URLSearchParams(location.search);
  const s = {
    q: p.get("q") || "", not: p.getAll("not").filter(Boolean), tag: p.get("tag") || "",
    like: p.get("like") || "", image: p.get("image") || "", view: p.get("view") || "",
    sort: ["date", "-date"].includes(p.get("sort")) ? p.get("sort") : "", min_score: p.get("min_score") || "",
  };
  for (const f of FILTERS) s[f] = p.get(f) || "";
  return s;
}

function toQuery(s) {
  const p = new URLSearchParams();
  if (s.view) p.set("view", s.view);
  if (s.q) p.set("q", s.q);
  for (const n of s.not || []) p.append("not", n);
  if (s.tag) p.set("tag", s.tag);
  if (s.like) p.set("like", s.like);
  if (s.image) p.set("image", s.image);
  if (s.sort) p.set("sort", s.sort);
  for (const f of FILTERS) if (s[f]) p.set(f, s[f]);
  if (s.min_score) p.set("min_score", s.min_score);
  return p;
}

function navigate(next, replace = false) {
  const url = "/" + (toQuery(next).toString() ? "?" + toQuery(next) : "");
  // the same URL again (a search repeated) refreshes the results without a second history entry
  if (replace || url === location.pathname + location.search) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  apply(readState());
}

// with sort, no query is needed: every photo the filters keep, by date
function hasQuery(s) { return Boolean(s.q || s.like || s.image || s.sort); }
function hasFilters(s) { return FILTERS.some((f) => s[f]); }

function apply(s) {
  state = s;
  els.q.value = s.q;
  els.not.value = s.not.join(", ");
  showControls(s);
  renderChipsState();
  renderQueryChip();
  els.infoLink.classList.toggle("active", s.view === "info");
  if (s.view === "info") { showInfo(); return; }
  els.info.hidden = true;
  if (!hasQuery(s)) {
    resetResults();
    els.welcome.hidden = false;
    setStatus("");
    document.title = "searchlite";
    return;
  }
  els.welcome.hidden = true;
  document.title = (s.q || (s.like ? "more like this" : "image search")) + " · searchlite";
  search(true);
}

// --- searching ---------------------------------------------------------------------------------

function resetResults() {
  generation += 1;
  hits = []; exhausted = false; loading = false;
  els.grid.replaceChildren();
  els.timeline.replaceChildren();
  els.verdict.hidden = true;
  els.timeline.hidden = !state.sort;
  els.grid.hidden = Boolean(state.sort);
}

function searchParams(offset) {
  const p = toQuery({ ...state, view: "" });
  p.set("k", String(PAGE));
  p.set("offset", String(offset));
  return p;
}

async function search(fresh) {
  if (fresh) resetResults();
  if (loading || exhausted) return;
  loading = true;
  const mine = generation;
  const started = performance.now();
  try {
    const data = await getJSON("/api/search?" + searchParams(hits.length));
    if (mine !== generation) return;
    showHits(data, performance.now() - started);
  } catch (err) {
    if (mine === generation) { setStatus(err.message, true); exhausted = true; }
  } finally {
    if (mine === generation) loading = false;
  }
  if (mine === generation) fillViewport();
}

async function searchByFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") { setStatus("that is not an image file", true); return; }
  const form = new FormData();
  form.append("image", file, file.name || "pasted image");
  if (els.q.value.trim()) form.append("q", els.q.value.trim());
  for (const n of splitNot(els.not.value)) form.append("not", n);
  const controls = controlState();
  if (state.tag) form.append("tag", state.tag);
  for (const f of ["sort", ...FILTERS]) if (controls[f]) form.append(f, controls[f]);
  form.append("k", String(PAGE));
  state = { ...state, sort: controls.sort };  // the view the answer goes to
  resetResults();
  els.welcome.hidden = true; els.info.hidden = true;
  setStatus("searching by " + (file.name || "the pasted image") + "…");
  const mine = generation;
  loading = true;
  const started = performance.now();
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    if (mine !== generation) return;
    if (queryImageUrl) URL.revokeObjectURL(queryImageUrl);
    queryImageUrl = URL.createObjectURL(file);
    const next = { ...controls, q: els.q.value.trim(), not: splitNot(els.not.value), tag: state.tag, like: "", image: data.image_key, view: "", min_score: "" };
    history.pushState(null, "", "/?" + toQuery(next));
    state = next;
    renderQueryChip();
    showHits(data, performance.now() - started);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    if (mine === generation) loading = false;
  }
}

function showHits(data, ms) {
  const page = data.hits;
  if (page.length < PAGE || (!state.sort && hits.length + page.length > TOP_OFFSET_MAX)) exhausted = true;
  const first = hits.length;
  hits.push(...page);
  if (state.sort) {
    addToTimeline(page, first);
    if (first === 0) showVerdict(data.cutoff);
    const total = data.total ?? hits.length;
    const order = state.sort === "date" ? "by date, oldest first" : "by date, newest first";
    setStatus([describe(), order, total.toLocaleString() + (total === 1 ? " photo" : " photos")].filter(Boolean).join(" · "));
    return;
  }
  const fragment = document.createDocumentFragment();
  page.forEach((hit, i) => fragment.append(tile(hit, first + i)));
  els.grid.append(fragment);
  if (!hits.length) setStatus("nothing found" + (state.tag ? " with the tag " + state.tag : ""));
  else setStatus(describe() + " · " + hits.length + (exhausted ? "" : "+") + " results" + (first === 0 ? " in " + Math.round(ms) + " ms" : ""));
}

function describe() {
  const parts = [];
  if (state.image) parts.push("like your image");
  if (state.like) parts.push("more like #" + state.like);
  if (state.q) parts.push("“" + state.q + "”");
  if (state.not.length) parts.push("not " + state.not.join(", "));
  if (state.tag) parts.push("tagged " + state.tag);
  if (state.after) parts.push("from " + state.after);
  if (state.before) parts.push("before " + state.before);
  if (state.camera) parts.push("camera " + state.camera);
  if (state.place) parts.push("in " + state.place);
  if (state.near) parts.push("near " + state.near);
  if (state.path) parts.push("in " + state.path);
  if (state.type) parts.push(state.type + "s only");
  return parts.join(" · ");
}

// --- the timeline: every relevant photo by date, under month headings ----------------------------

// the month headings stick just below the bar, whose height changes with the window's width
const bar = document.querySelector(".bar");
new ResizeObserver(() => document.documentElement.style.setProperty("--bar-height", bar.offsetHeight + "px")).observe(bar);

function monthOf(hit) { return hit.taken_at ? hit.taken_at.slice(0, 7) : ""; }

function monthTitle(key) {
  if (!key) return "No date";
  const [year, month] = key.split("-").map(Number);
  return new Date(Date.UTC(year, month - 1, 1)).toLocaleDateString(undefined, { month: "long", year: "numeric", timeZone: "UTC" });
}

function addToTimeline(page, first) {
  page.forEach((hit, i) => {
    const key = monthOf(hit);
    let group = els.timeline.lastElementChild;
    if (!group || group.dataset.month !== key) {  // a page may go on with the last month of the one before
      group = document.createElement("section");
      group.className = "month";
      group.dataset.month = key;
      const head = document.createElement("h2");
      head.className = "month-head";
      const title = document.createElement("span"); title.textContent = monthTitle(key);
      const count = document.createElement("span"); count.className = "count";
      head.append(title, count);
      const grid = document.createElement("div"); grid.className = "grid";
      group.append(head, grid);
      els.timeline.append(group);
    }
    const grid = group.querySelector(".grid");
    grid.append(tile(hit, first + i));
    group.querySelector(".count").textContent = String(grid.children.length);
  });
}

// the cut-off's verdict in words, and the min-score slider that overrides it
function showVerdict(cutoff) {
  if (!cutoff) { els.verdict.hidden = true; return; }
  els.verdictText.textContent = cutoff.summary;
  els.verdict.classList.toggle("nothing", cutoff.kept === 0);
  const key = toQuery({ ...state, view: "", min_score: "", sort: "" }).toString();
  if (slider.key !== key) {  // a new query: a range around its scores, kept while the slider moves
    const best = cutoff.best ?? 1;
    const low = Math.min(cutoff.bulk_median ?? best - 0.2, cutoff.threshold ?? best);
    slider = { key, min: Math.max(-1, Math.floor(low * 100) / 100 - 0.05), max: Math.min(1, Math.ceil(best * 100) / 100) };
  }
  const value = state.min_score !== "" ? Number(state.min_score) : cutoff.threshold ?? (cutoff.method === "scores" ? slider.max : slider.min);
  els.minScore.min = String(Math.min(slider.min, value));
  els.minScore.max = String(Math.max(slider.max, value));
  els.minScore.value = String(value);
  els.minScoreValue.textContent = value.toFixed(3);
  els.auto.hidden = state.min_score === "";
  // nothing passed: offer the best ones, as the summary suggests
  const suggested = cutoff.best != null ? Math.floor(cutoff.best * 100) / 100 : null;
  els.widen.hidden = !(cutoff.kept === 0 && suggested != null && (state.min_score === "" || suggested < Number(state.min_score)));
  if (suggested != null) {
    els.widen.textContent = "Show the best (score ≥ " + suggested.toFixed(2) + ")";
    els.widen.dataset.score = suggested.toFixed(2);
  }
  els.verdict.hidden = false;
}
els.minScore.addEventListener("input", () => { els.minScoreValue.textContent = Number(els.minScore.value).toFixed(3); });
els.minScore.addEventListener("change", () => navigate({ ...state, min_score: Number(els.minScore.value).toFixed(3) }));
els.widen.addEventListener("click", () => navigate({ ...state, min_score: els.widen.dataset.score }));
els.auto.addEventListener("click", () => navigate({ ...state, min_score: "" }));

function tile(hit, index) {
  const a = document.createElement("a");
  a.className = "tile";
  a.href = hit.image;
  a.dataset.index = String(index);
  a.dataset.id = String(hit.id);
  const ratio = hit.width && hit.height ? Math.min(Math.max(hit.width / hit.height, 0.4), 3) : 1;
  a.style.flexGrow = String(ratio);                       // justified rows (CSSOM is allowed by the CSP)
  a.style.flexBasis = "calc(var(--row) * " + ratio + ")";
  a.title = "score " + hit.score.toFixed(4) + " — " + basename(hit.path);
  const img = document.createElement("img");
  img.alt = basename(hit.path);
  img.decoding = "async";
  img.loading = index < PAGE ? "eager" : "lazy";
  img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
  img.src = hit.thumb;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  a.append(img, score);
  if (hit.type === "video") {
    const play = document.createElement("span");
    play.className = "play";
    play.textContent = "▶" + (hit.time != null ? " " + clock(hit.time) : "");
    a.append(play);
  }
  a.addEventListener("click", (e) => {
    if (e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    openDetail(index);
  });
  return a;
}

// keep loading as the user scrolls
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && hasQuery(state) && state.view !== "info" && hits.length) search(false);
}, { rootMargin: "800px" }).observe(els.sentinel);

function fillViewport() {
  if (!exhausted && hits.length && els.sentinel.getBoundingClientRect().top < innerHeight + 800) search(false);
}

// --- query by image: pick, paste, drop -----------------------------------------------------------

els.pick.addEventListener("click", () => els.file.click());
els.file.addEventListener("change", () => { searchByFile(els.file.files[0]); els.file.value = ""; });
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) { e.preventDefault(); searchByFile(file); }
});
let dragDepth = 0;
const carriesFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (e) => { if (carriesFiles(e)) { dragDepth += 1; els.drop.hidden = false; } });
window.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) els.drop.hidden = true; });
window.addEventListener("dragover", (e) => { if (carriesFiles(e)) e.preventDefault(); });
window.addEventListener("drop", (e) => {
  dragDepth = 0; els.drop.hidden = true;
  const file = [...(e.dataTransfer?.files || [])][0];
  if (file) { e.preventDefault(); searchByFile(file); }
});

function renderQueryChip() {
  if (state.like) { els.queryThumb.src = "/api/thumbs/" + encodeURIComponent(state.like); els.queryChip.hidden = false; }
  else if (state.image && queryImageUrl) { els.queryThumb.src = queryImageUrl; els.queryChip.hidden = false; }
  else if (state.image) { els.queryThumb.removeAttribute("src"); els.queryThumb.alt = "image"; els.queryChip.hidden = false; }
  else els.queryChip.hidden = true;
}
els.queryClear.addEventListener("click", () => navigate({ ...state, like: "", image: "" }));

// --- the form, tags, keys ------------------------------------------------------------------------

function splitNot(text) { return text.split(",").map((s) => s.trim()).filter(Boolean); }

// what the filter controls and the order say (the place box holds a city or LAT,LON[,KM])
function controlState() {
  const place = els.place.value.trim();
  const point = POINT.test(place);
  return {
    sort: els.sort.value, after: els.after.value.trim(), before: els.before.value.trim(), camera: els.camera.value.trim(),
    place: point ? "" : place, near: point ? place.replace(/\s+/g, "") : "", path: els.path.value.trim(), type: els.type.value,
  };
}

function showControls(s) {
  els.sort.value = s.sort;
  for (const f of ["after", "before", "camera", "path", "type"]) els[f].value = s[f];
  els.place.value = s.near || s.place;
  if (hasFilters(s)) openFilters(true);
}

function openFilters(open) {
  els.filters.hidden = !open;
  els.filtersToggle.setAttribute("aria-expanded", String(open));
}
els.filtersToggle.addEventListener("click", () => openFilters(els.filters.hidden));

function submitControls(leaving = false) {
  const q = els.q.value.trim();
  const not = splitNot(els.not.value);
  const next = { ...state, ...controlState(), q, not, view: "" };
  if (q !== state.q || not.join() !== state.not.join()) next.min_score = "";  // a new query: its own cut-off
  // filters and no query: every photo they keep, by date
  if (!next.q && !next.like && !next.image && !next.sort && hasFilters(next)) next.sort = "date";
  if (!hasQuery(next)) {  // "Best matches" with no query left: the welcome page
    if (leaving && hasQuery(state)) navigate(next); else els.q.focus();
    return;
  }
  navigate(next);
}

els.form.addEventListener("submit", (e) => { e.preventDefault(); submitControls(); });
for (const select of [els.sort, els.type]) select.addEventListener("change", () => submitControls(true));
els.filtersClear.addEventListener("click", () => {
  const cleared = { ...state, view: "" };
  for (const f of FILTERS) cleared[f] = "";
  if (hasQuery(cleared)) navigate(cleared); else showControls(cleared);
});

let tagCounts = [];
async function loadTags() {
  try { tagCounts = (await getJSON("/api/tags")).tags; } catch { tagCounts = []; }
  els.chips.replaceChildren(...tagCounts.map(({ label, count }) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "chip"; b.dataset.tag = label;
    b.append(label);
    const n = document.createElement("span"); n.className = "count"; n.textContent = String(count);
    b.append(n);
    b.addEventListener("click", () => navigate({ ...state, tag: state.tag === label ? "" : label, view: "" }));
    return b;
  }));
  renderChipsState();
}
function renderChipsState() {
  for (const chip of els.chips.children) chip.setAttribute("aria-pressed", String(chip.dataset.tag === state.tag));
}

document.addEventListener("keydown", (e) => {
  if (els.detail.open) {
    if (e.key === "ArrowRight") { e.preventDefault(); step(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); step(-1); }
    return; // Esc closes the dialog by itself
  }
  const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement;
  if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey) { e.preventDefault(); els.q.focus(); els.q.select(); }
});

// --- the detail view ------------------------------------------------------------------------------

function openDetail(index) {
  current = index;
  const hit = hits[index];
  const video = hit.type === "video";
  els.detailImg.hidden = video;
  els.detailVideo.hidden = !video;
  if (video) {
    // the original, played from the shot that matched; the thumbnail (that shot's frame) stands
    // in while it loads, and for good where the browser cannot play the codec
    els.detailImg.removeAttribute("src");
    els.detailVideo.poster = hit.thumb;
    els.detailVideo.src = hit.view;
  } else {
    stopVideo();
    els.detailImg.src = hit.view;  // the original, or a rendition of a format browsers cannot show
  }
  els.detailImg.alt = basename(hit.path);
  els.dAt.textContent = hit.time != null ? clock(hit.time) + " – " + clock(hit.time + (hit.span || 0)) : "";
  els.dAt.hidden = els.dAtLabel.hidden = hit.time == null;
  els.dPath.textContent = hit.path;
  els.dScore.textContent = hit.score.toFixed(4);
  els.dDims.textContent = hit.width && hit.height ? hit.width + " × " + hit.height + " px" : "unknown";
  els.dBytes.textContent = hit.size != null ? humanBytes(hit.size) : "unknown";
  els.dTags.textContent = hit.tags.length ? hit.tags.join(", ") : "none";
  els.original.href = hit.image;
  const where = $("where");
  where.hidden = !state.q || video;  // a heat map of the text query over this image, on request
  where.textContent = "Where?";
  where.onclick = () => {
    const showing = els.detailImg.src.includes("/api/explain/");
    els.detailImg.src = showing ? hit.view : "/api/explain/" + hit.id + "?q=" + encodeURIComponent(state.q);
    where.textContent = showing ? "Where?" : "Hide";
  };
  els.copy.textContent = "Copy";
  els.prev.disabled = index === 0;
  els.next.disabled = index === hits.length - 1 && exhausted;
  if (!els.detail.open) els.detail.showModal();
  tileAt(index)?.scrollIntoView({ block: "nearest" });
}

async function step(delta) {
  const target = current + delta;
  if (target < 0) return;
  if (target >= hits.length) {
    if (exhausted) return;
    await search(false);
    if (target >= hits.length) return;
  }
  openDetail(target);
}

els.prev.addEventListener("click", () => step(-1));
els.next.addEventListener("click", () => step(1));
els.close.addEventListener("click", () => els.detail.close());
els.detail.addEventListener("close", stopVideo);
els.detailVideo.addEventListener("error", () => {  // a codec this browser cannot play: show the frame
  if (!els.detailVideo.getAttribute("src")) return;
  els.detailImg.src = els.detailVideo.poster;
  els.detailVideo.hidden = true;
  els.detailImg.hidden = false;
});

function stopVideo() {
  els.detailVideo.pause();
  els.detailVideo.removeAttribute("src");
  els.detailVideo.load();  // lets go of the file
}
els.detail.addEventListener("click", (e) => { if (e.target === els.detail) els.detail.close(); });
els.detail.addEventListener("close", () => tileAt(current)?.focus({ preventScroll: true }));
function tileAt(index) { return (state.sort ? els.timeline : els.grid).querySelector(`.tile[data-index="${index}"]`); }
els.more.addEventListener("click", () => {
  const hit = hits[current];
  els.detail.close();
  navigate({ ...state, q: "", not: [], like: String(hit.id), image: "", view: "", min_score: "" });
});
els.copy.addEventListener("click", async () => {
  const text = els.dPath.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange(); range.selectNodeContents(els.dPath);
    const sel = getSelection(); sel.removeAllRanges(); sel.addRange(range);
    document.execCommand("copy");
  }
  els.copy.textContent = "Copied";
});

// --- the index page -------------------------------------------------------------------------------

async function showInfo() {
  resetResults();
  els.welcome.hidden = true;
  setStatus("");
  document.title = "index · searchlite";
  let info;
  try { info = await getJSON("/api/info"); } catch (err) { setStatus(err.message, true); return; }
  const rows = [
    ["Images indexed", info.images.toLocaleString()],
    ["Videos indexed", (info.videos || 0).toLocaleString()],
    ["Failed", info.failed.toLocaleString()],
    ["Not images", info.not_images.toLocaleString()],
    ["Model", info.model_name || "none yet"],
    ["Embedding size", info.dim ?? "—"],
    ["Vector index", info.vector_index],
    ["Database", humanBytes(info.database_bytes)],
    ["Vectors file", humanBytes(info.vectors_bytes)],
    ["Tags", Object.entries(info.tags).map(([t, n]) => t + " " + n).join(", ") || "none"],
    ["Index folder", info.index],
    ["Thumbnail cache", info.thumbnails],
  ];
  const h2 = document.createElement("h2"); h2.textContent = "Index “" + info.name + "”";
  const table = document.createElement("table");
  for (const [k, v] of rows) table.append(row(k, String(v), "th"));
  const parts = [h2, table];
  const h3 = document.createElement("h2");
  h3.textContent = info.failed ? "Files that failed (" + info.failed + ")" : "No file failed";
  parts.push(h3);
  if (info.failed_files.length) {
    const failed = document.createElement("table"); failed.className = "failed";
    for (const f of info.failed_files) failed.append(row(f.path, f.error, "td"));
    parts.push(failed);
  }
  els.info.replaceChildren(...parts);
  els.info.hidden = false;
}

function row(key, value, keyTag) {
  const tr = document.createElement("tr");
  const k = document.createElement(keyTag); k.textContent = key;
  const v = document.createElement("td"); v.textContent = value;
  tr.append(k, v);
  return tr;
}

// --- helpers ------------------------------------------------------------------------------------

async function getJSON(url) {
  const response = await fetch(url);
  let data;
  try { data = await response.json(); } catch { throw new Error(response.status + " " + response.statusText); }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function setStatus(text, error = false) { els.status.textContent = text; els.status.classList.toggle("error", error); }
function basename(path) { return path.split(/[\\/]/).pop(); }
function clock(seconds) {
  const s = Math.floor(seconds);
  return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
}
function humanBytes(n) {
  if (n == null) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + " " + units[i];
}

// --- the sketch pad: a drawing searched as an image query -------------------------------------

const pad = { dialog: $("sketch"), canvas: $("pad"), brush: $("brush"), color: "#d81e1e", drawing: false, last: null };
pad.ctx = pad.canvas.getContext("2d");

function clearPad() {
  pad.ctx.fillStyle = "#ffffff";
  pad.ctx.fillRect(0, 0, pad.canvas.width, pad.canvas.height);
}

function padPoint(event) {
  const box = pad.canvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.canvas.width / box.width, y: (event.clientY - box.top) * pad.canvas.height / box.height };
}

function stroke(from, to) {
  const ctx = pad.ctx;
  ctx.strokeStyle = pad.color; ctx.fillStyle = pad.color;
  ctx.lineWidth = Number(pad.brush.value); ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(from.x, from.y); ctx.lineTo(to.x, to.y); ctx.stroke();
}

pad.canvas.addEventListener("pointerdown", (e) => {
  pad.drawing = true; pad.last = padPoint(e); pad.canvas.setPointerCapture(e.pointerId); stroke(pad.last, pad.last);
});
pad.canvas.addEventListener("pointermove", (e) => {
  if (!pad.drawing) return;
  const p = padPoint(e); stroke(pad.last, p); pad.last = p;
});
for (const type of ["pointerup", "pointercancel"]) pad.canvas.addEventListener(type, () => { pad.drawing = false; });
for (const swatch of document.querySelectorAll("#sketch .swatch")) {
  swatch.style.background = swatch.dataset.color;
  swatch.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#sketch .swatch")) other.classList.toggle("selected", other === swatch);
    pad.color = swatch.dataset.color;
  });
}
$("sketch-open").addEventListener("click", () => { if (!pad.dialog.open) pad.dialog.showModal(); });
$("sketch-clear").addEventListener("click", clearPad);
$("sketch-search").addEventListener("click", () => {
  pad.canvas.toBlob((blob) => {
    pad.dialog.close();
    searchByFile(new File([blob], "sketch.png", { type: "image/png" }));
  }, "image/png");
});
clearPad();

window.addEventListener("popstate", () => { if (els.detail.open) els.detail.close(); apply(readState()); });

async function start() {
  loadTags();
  apply(readState());
  if (!hasQuery(state)) els.q.focus();
  try {
    const info = await getJSON("/api/info");
    els.welcomeFacts.textContent = info.images.toLocaleString() + " images indexed · " + (info.model_name || "");
    els.cameras.replaceChildren(...(info.cameras || []).map((c) => {
      const option = document.createElement("option");
      option.value = c.model || c.make;
      option.label = c.images + " photos";
      return option;
    }));
  } catch { /* the status line says what is wrong once the user searches */ }
}
start();
