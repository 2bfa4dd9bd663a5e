// The review desk. Everything the page shows is built with textContent
// and never parsed as markup: record text is whatever a tablet typed.
// Every string a person reads goes through t(key, params), from the
// catalogues at /review/i18n/{lang}.json.
"use strict";

const LANGS = ["en", "fr", "sw", "pt", "ar"];
const RTL = new Set(["ar"]);
const LANG_KEY = "baraza.review.lang";
const UNDO_MS = 5000;
const LIVE_DEBOUNCE_MS = 250;

// Test hooks in the address: `?poll=60000` stretches the fallback poll.
const PARAMS = new URLSearchParams(location.search);
function numberParam(name, fallback, min, max) {
  const value = Number(PARAMS.get(name));
  return Number.isFinite(value) && value >= min && value <= max ? value : fallback;
}
const POLL_MS = numberParam("poll", 5000, 1000, 3600000);

// What each kind of record holds, as records/src/schema.rs says (a Rust
// test checks every field there appears here with its type).
const S = (name, type, parts) => ({ name, type, parts: parts || [] });
const GPS = [S("lat", "str"), S("lon", "str"), S("accuracy_m", "int")];
const ATTACHMENT = [
  S("sha256", "digest"), S("size_bytes", "int"), S("mime", "str"), S("name", "str"),
  S("created_at", "time"), S("created_by", "str"),
];
const SCHEMA = {
  meeting: [
    S("title", "str"), S("held_at", "time"), S("place", "str"), S("facilitator", "str"),
    S("attendees", "list", [S("name", "str"), S("role", "str"), S("gender", "str"), S("age_band", "str")]),
    S("headcount", "map", [S("women", "int"), S("men", "int"), S("youth", "int"), S("elders", "int"), S("total", "int")]),
    S("concerns", "list", [S("topic", "str"), S("text", "str"), S("raised_by", "str")]),
    S("action_items", "list", [S("text", "str"), S("owner", "str"), S("due", "time"), S("status", "enum")]),
    S("notes", "text"),
    S("photos", "list", ATTACHMENT), S("audio", "list", ATTACHMENT), S("attendance_sheet", "list", ATTACHMENT),
  ],
  patrol_note: [
    S("officer", "str"), S("beat", "str"), S("started_at", "time"), S("ended_at", "time"),
    S("observations", "list", [
      S("at", "time"), S("text", "str"), S("gps", "map", GPS), S("tags", "str"), S("photos", "list", ATTACHMENT),
    ]),
    S("notes", "text"),
    S("photos", "list", ATTACHMENT),
  ],
  feedback: [
    S("channel", "enum"), S("category", "enum"), S("about", "str"), S("description", "text"),
    S("anonymous", "bool"), S("status", "enum"),
    S("follow_ups", "list", [S("at", "time"), S("by", "str"), S("status", "enum"), S("note", "str")]),
    S("contact", "str"),
    S("photos", "list", ATTACHMENT), S("documents", "list", ATTACHMENT),
  ],
  feedback_contact: [
    S("feedback", "str"), S("name", "str"), S("phone", "str"), S("email", "str"), S("address", "str"),
    S("documents", "list", ATTACHMENT),
  ],
};

const desk = {
  signedIn: false,
  epoch: 0,
  csrf: "",
  rows: [],
  selected: -1,
  current: null,
  seen: new Set(),
  first: true,
  view: "queue",
  report: null,
  poll: null,
  events: null,
  liveTimer: null,
  typingTimer: null,
  pending: null,
  dialog: null,
};

const i18n = { lang: "en", dict: {}, en: {}, cache: {}, time: null, number: null };

const $ = (id) => document.getElementById(id);

// ---- Languages -------------------------------------------------------

function t(key, params) {
  let text = i18n.dict[key];
  if (typeof text !== "string") text = i18n.en[key];
  if (typeof text !== "string") text = key;
  if (params) {
    text = text.replace(/\{(\w+)\}/g, (whole, name) =>
      Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole);
  }
  return text;
}

// The same, as nodes: each {param} isolated in a <bdi>, so a Latin name
// or a date inside Arabic text keeps its place (and Arabic inside English).
function tn(key, params) {
  const text = t(key);
  const nodes = [];
  let last = 0;
  text.replace(/\{(\w+)\}/g, (whole, name, offset) => {
    nodes.push(text.slice(last, offset));
    if (params && Object.prototype.hasOwnProperty.call(params, name)) {
      const value = params[name];
      nodes.push(value instanceof Node ? value : el("bdi", { text: String(value) }));
    } else {
      nodes.push(whole);
    }
    last = offset + whole.length;
    return whole;
  });
  nodes.push(text.slice(last));
  return el("span", {}, ...nodes.filter((n) => n !== ""));
}

// A label for a key that may be missing (a field a newer schema adds):
// the raw name rather than the key.
function label(key, raw) {
  return i18n.dict[key] || i18n.en[key] || raw;
}

async function catalogue(lang) {
  if (i18n.cache[lang]) return i18n.cache[lang];
  try {
    const response = await fetch("/review/i18n/" + lang + ".json", { credentials: "same-origin" });
    if (!response.ok) return {};
    const dict = await response.json();
    i18n.cache[lang] = dict && typeof dict === "object" ? dict : {};
  } catch (_) {
    return {};
  }
  return i18n.cache[lang];
}

function storedLang() {
  try { return localStorage.getItem(LANG_KEY); } catch (_) { return null; }
}

function chooseLang() {
  const stored = storedLang();
  if (LANGS.includes(stored)) return stored;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const primary = String(tag).toLowerCase().split("-")[0];
    if (LANGS.includes(primary)) return primary;
  }
  return "en";
}

async function setLang(lang, remember) {
  if (!LANGS.includes(lang)) lang = "en";
  const [en, dict] = await Promise.all([catalogue("en"), catalogue(lang)]);
  i18n.en = en;
  i18n.dict = dict;
  i18n.lang = lang;
  if (remember) {
    try { localStorage.setItem(LANG_KEY, lang); } catch (_) { /* private mode */ }
  }
  const root = document.documentElement;
  root.lang = lang;
  root.dir = RTL.has(lang) ? "rtl" : "ltr";
  try {
    i18n.time = new Intl.DateTimeFormat(lang, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", timeZoneName: "short",
    });
    i18n.number = new Intl.NumberFormat(lang, { style: "percent" });
  } catch (_) {
    i18n.time = null;
    i18n.number = null;
  }
  $("lang").value = lang;
  translateStatic();
  if (desk.signedIn) {
    renderWho();
    renderQueue();
    if (desk.current) renderRecord(desk.current);
    if (desk.report) renderReport(desk.report);
    renderToggle();
    renderPending();
  }
}

function translateStatic() {
  document.title = t("app.title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) node.placeholder = t(node.dataset.i18nPlaceholder);
}

// ---- Small helpers ---------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function button(text, cls, action, id) {
  const b = el("button", { type: "button", class: cls, text });
  if (id) b.id = id;
  b.addEventListener("click", action);
  return b;
}

function when(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "";
  try {
    if (i18n.time) return i18n.time.format(new Date(ms));
    return new Date(ms).toISOString();
  } catch (_) {
    return String(ms);
  }
}

function iso(ms) {
  try { return new Date(ms).toISOString(); } catch (_) { return null; }
}

function kindLabel(kind) {
  return label("kind." + kind, String(kind || "").replace(/_/g, " "));
}

function enumLabel(value) {
  return label("enum." + value, String(value));
}

function fieldLabel(name) {
  return label("field." + name, String(name));
}

function partLabel(field, part) {
  return label("part." + field + "." + part, String(part));
}

function shortId(hex) {
  return typeof hex === "string" && hex ? hex.slice(0, 8) : "";
}

function recordTitle(data) {
  const f = data.fields || {};
  const first = typeof f.description === "string" ? f.description.split("\n")[0] : "";
  return f.title || f.beat || f.about || first || data.id;
}

// ---- The server ------------------------------------------------------

// A reply that arrives after sign-out belongs to a session that is gone:
// it never resolves, so nothing from it reaches the page.
async function api(method, path, body) {
  const epoch = desk.epoch;
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = desk.csrf;
  let response;
  let data = null;
  try {
    response = await fetch("/review/api/" + path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    try { data = await response.json(); } catch (_) { data = null; }
  } catch (_) {
    response = { status: 0 };
  }
  if (epoch !== desk.epoch) return new Promise(() => {});
  if (response.status === 401 && path !== "login" && path !== "session") {
    signedOut();
    return new Promise(() => {});
  }
  return { status: response.status, data };
}

// ---- Signing in and out ----------------------------------------------

// Everything of the session leaves the page: rows, record, comments,
// report, filters, timers, the event stream, a decision waiting.
function clearDesk() {
  desk.epoch += 1;
  desk.signedIn = false;
  clearInterval(desk.poll);
  clearTimeout(desk.liveTimer);
  clearTimeout(desk.typingTimer);
  desk.poll = desk.liveTimer = desk.typingTimer = null;
  desk.liveRecord = false;
  desk.who = null;
  if (desk.events) desk.events.close();
  desk.events = null;
  if (desk.pending) {
    clearTimeout(desk.pending.timer);
    clearInterval(desk.pending.tick);
  }
  desk.pending = null;
  closeDialog(false);
  desk.csrf = "";
  desk.rows = [];
  desk.selected = -1;
  desk.current = null;
  desk.currentSeen = null;
  desk.report = null;
  desk.seen = new Set();
  desk.first = true;
  desk.view = "queue";
  $("queue").replaceChildren();
  $("queue-status").textContent = "";
  $("record").replaceChildren();
  $("report-body").replaceChildren();
  $("exports").replaceChildren();
  $("pending-text").replaceChildren();
  $("pending").hidden = true;
  $("filters").reset();
  $("who").replaceChildren();
}

function signedOut() {
  clearDesk();
  $("desk").hidden = true;
  $("report").hidden = true;
  $("report-toggle").hidden = true;
  $("report-toggle").setAttribute("aria-pressed", "false");
  $("signout").hidden = true;
  $("password").value = "";
  $("signin").hidden = false;
  $("user").focus();
}

function renderWho() {
  if (!desk.who) return;
  $("who").replaceChildren(tn("who", { user: desk.who.user, areas: (desk.who.areas || []).join(", ") }));
}

function signedIn(who) {
  clearDesk();
  desk.signedIn = true;
  desk.csrf = who.csrf;
  desk.who = { user: who.user, areas: who.areas || [] };
  renderWho();
  $("signin").hidden = true;
  $("signin-error").textContent = "";
  $("signout").hidden = false;
  $("report-toggle").hidden = false;
  showView("queue", false);
  $("record").replaceChildren(el("p", { class: "empty", text: t("record.empty") }));
  loadQueue();
  startLive();
}

// ---- Live updates ----------------------------------------------------

// The event stream tells of records as they change; the poll is only a
// fallback for when the stream is down.
function startPoll() {
  if (desk.poll || !desk.signedIn) return;
  desk.poll = setInterval(loadQueue, POLL_MS);
}

function stopPoll() {
  clearInterval(desk.poll);
  desk.poll = null;
}

function startLive() {
  if (typeof EventSource !== "function") {
    startPoll();
    return;
  }
  const events = new EventSource("/review/api/events");
  desk.events = events;
  events.addEventListener("open", () => {
    if (desk.events !== events) return;
    // Back after an outage: catch up on what the poll may have missed.
    if (desk.poll) {
      stopPoll();
      liveChange(null);
    }
  });
  events.addEventListener("error", () => {
    if (desk.events !== events) return;
    startPoll();
    if (events.readyState === EventSource.CLOSED) desk.events = null;
  });
  events.addEventListener("record", (e) => {
    if (desk.events !== events) return;
    let row = null;
    try { row = JSON.parse(e.data); } catch (_) { row = null; }
    liveChange(row);
  });
}

// Events coalesce: the first schedules one refresh a moment later and
// those arriving meanwhile join it, so a burst costs one reload and the
// first of them is not held back by the rest. `row` null: anything may
// have changed (the stream is back after an outage).
function liveChange(row) {
  const id = row && typeof row.id === "string" ? row.id : null;
  const current = desk.current && desk.current.id;
  desk.liveRecord = desk.liveRecord || (row === null ? Boolean(current) : Boolean(id && id === current));
  if (desk.liveTimer) return;
  desk.liveTimer = setTimeout(() => {
    desk.liveTimer = null;
    const reopen = desk.liveRecord && desk.current;
    desk.liveRecord = false;
    loadQueue();
    if (reopen) openRecord(desk.current.id, true);
  }, LIVE_DEBOUNCE_MS);
}

// ---- The queue -------------------------------------------------------

function query() {
  const params = new URLSearchParams();
  for (const [name, id] of [["kind", "f-kind"], ["state", "f-state"], ["area", "f-area"], ["q", "f-q"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params.toString();
}

function rowTime(row) {
  return typeof row.submitted_at === "number" ? row.submitted_at : row.created_at;
}

async function loadQueue() {
  if (!desk.signedIn) return;
  // Replies may come back out of order: only the latest asked is drawn.
  const asked = (desk.queueAsked = (desk.queueAsked || 0) + 1);
  const { status, data } = await api("GET", "records?" + query());
  if (asked !== desk.queueAsked) return;
  if (status !== 200 || !data || !Array.isArray(data.records)) {
    $("queue-status").textContent = t("queue.error", { status });
    return;
  }
  const rows = data.records.slice().sort((a, b) => (rowTime(b) || 0) - (rowTime(a) || 0));
  const keep = desk.selected >= 0 && desk.rows[desk.selected] ? desk.rows[desk.selected].id : null;
  desk.rows = rows;
  desk.selected = keep ? rows.findIndex((r) => r.id === keep) : -1;
  renderQueue();
}

function clockFlag(clock) {
  if (!clock) return null;
  return el("span", {
    class: "clock-flag",
    title: t("clock.claimed", { time: when(clock.claimed_ms) }),
    text: t("clock.flag", { times: clock.times, days: (clock.ahead_ms_max / 86400000).toFixed(1) }),
  });
}

// A row's element is kept from one refresh to the next (only its content
// is redrawn), so a live update never pulls a row from under a click.
function queueItem(row, i, existing) {
  const fresh = !desk.first && !desk.seen.has(row.id);
  const title = typeof row.title === "string" && row.title.trim() ? row.title : kindLabel(row.kind);
  const time = typeof row.submitted_at === "number"
    ? tn("queue.submitted", { time: when(row.submitted_at) })
    : tn("queue.created", { time: when(row.created_at) });
  const marks = el("div", { class: "marks" },
    row.conflicts === true ? el("span", { class: "conflict-mark", text: t("queue.conflict") }) : null,
    typeof row.comments === "number" ? el("span", { class: "comment-count", text: t("queue.comments", { n: row.comments }) }) : null,
    fresh ? el("span", { class: "new", text: t("queue.new") }) : null,
    clockFlag(row.clock));
  let item = existing;
  if (!item) {
    item = el("li", { role: "option", tabindex: "-1", "data-id": row.id });
    item.addEventListener("click", () => select(desk.rows.findIndex((r) => r.id === row.id), true));
  }
  item.setAttribute("aria-selected", String(i === desk.selected));
  const content = [
    el("div", { class: "title" }, el("bdi", { text: title })),
    el("div", { class: "kind" }, kindLabel(row.kind) + " \u00b7 ", el("bdi", { text: row.area }), " \u00b7 " + enumLabel(row.state)),
    el("p", { class: "meta" }, tn("queue.by", { user: row.created_by || "" }), " \u00b7 ", time),
  ];
  if (marks.childElementCount) content.push(marks);
  item.replaceChildren(...content);
  return item;
}

// Marks for measuring (the benchmark reads them through WebDriver):
// `baraza:row-shown:{id}` when a row first joins the open queue and
// `baraza:record-render` for each time a record is drawn.
function mark(name, start) {
  try {
    if (start === undefined) performance.mark(name);
    else performance.measure(name, { start });
  } catch (_) { /* no User Timing here */ }
}

function renderQueue() {
  const list = $("queue");
  const hadFocus = list.contains(document.activeElement);
  if (!desk.first) for (const row of desk.rows) if (!desk.seen.has(row.id)) mark("baraza:row-shown:" + row.id);
  const old = new Map([...list.children].map((li) => [li.dataset.id, li]));
  const items = desk.rows.map((row, i) => queueItem(row, i, old.get(row.id)));
  const keep = new Set(items);
  for (const li of [...list.children]) if (!keep.has(li)) li.remove();
  items.forEach((item, i) => {
    if (list.children[i] !== item) list.insertBefore(item, list.children[i] || null);
  });
  for (const row of desk.rows) desk.seen.add(row.id);
  desk.first = false;
  if (hadFocus && desk.selected >= 0) list.children[desk.selected].focus();
  $("queue-status").textContent = t("queue.count", { n: desk.rows.length });
}

function select(i, open) {
  if (i < 0 || i >= desk.rows.length) return;
  desk.selected = i;
  const items = $("queue").children;
  for (let j = 0; j < items.length; j++) items[j].setAttribute("aria-selected", String(j === i));
  items[i].focus();
  if (open) openRecord(desk.rows[i].id);
}

// ---- The record ------------------------------------------------------

function absent() {
  return el("span", { class: "absent", text: t("record.not_recorded") });
}

function gpsNode(gps) {
  if (!gps || typeof gps !== "object") return absent();
  const lat = String(gps.lat ?? "").trim();
  const lon = String(gps.lon ?? "").trim();
  const accuracy = typeof gps.accuracy_m === "number" ? " " + t("gps.accuracy", { m: gps.accuracy_m }) : "";
  const decimal = /^-?\d{1,3}(\.\d+)?$/;
  const valid = decimal.test(lat) && decimal.test(lon) && Math.abs(Number(lat)) <= 90 && Math.abs(Number(lon)) <= 180;
  const point = t("gps.point", { lat, lon });
  if (!valid) return el("span", { class: "gps", dir: "ltr", text: point + accuracy });
  const href = "https://www.openstreetmap.org/?mlat=" + encodeURIComponent(lat) + "&mlon=" + encodeURIComponent(lon) +
    "#map=17/" + encodeURIComponent(lat) + "/" + encodeURIComponent(lon);
  return el("span", { class: "gps" },
    el("a", { href, rel: "noreferrer noopener", target: "_blank", title: t("gps.map_title"), dir: "ltr", text: point }),
    accuracy);
}

function scalar(type, value) {
  if (value === null || value === undefined || value === "") return absent();
  if (type === "time") {
    if (typeof value !== "number") return document.createTextNode(String(value));
    return el("time", { datetime: iso(value), text: when(value) });
  }
  if (type === "enum") return el("span", { "data-value": String(value), text: enumLabel(value) });
  if (type === "bool") return document.createTextNode(value === true ? t("value.yes") : value === false ? t("value.no") : String(value));
  if (type === "text") return el("span", { class: "text", text: String(value) });
  if (typeof value === "object") return document.createTextNode(JSON.stringify(value));
  return document.createTextNode(String(value));
}

// Parts the schema names, then any a newer schema added.
function partsOf(spec, values) {
  const parts = spec.parts.slice();
  for (const value of values) {
    if (!value || typeof value !== "object") continue;
    for (const key of Object.keys(value)) {
      if (!parts.some((p) => p.name === key)) parts.push(S(key, "str"));
    }
  }
  return parts;
}

// The record being drawn, for the links of attachments inside list items.
let drawnRecord = "";

function cell(spec, part, value) {
  if (part.parts === ATTACHMENT) return attachmentsView(drawnRecord, value);
  if (part.type === "map" && part.name === "gps") return gpsNode(value);
  if (part.type === "map" || (value && typeof value === "object")) return mapTable(part, value);
  return scalar(part.type, value);
}

function listTable(spec, items) {
  if (!Array.isArray(items) || items.length === 0) return el("p", { class: "absent", text: t("record.none") });
  const parts = partsOf(spec, items);
  return el("table", { class: "items", "data-list": spec.name },
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: t("record.number") }),
      ...parts.map((p) => el("th", { scope: "col", "data-part": p.name, text: partLabel(spec.name, p.name) })))),
    el("tbody", {}, ...items.map((item, i) => el("tr", {},
      el("td", { class: "n", text: String(i + 1) }),
      ...parts.map((p) => el("td", { "data-part": p.name }, cell(spec, p, item && typeof item === "object" ? item[p.name] : null)))))));
}

function mapTable(spec, value) {
  if (!value || typeof value !== "object") return absent();
  const parts = partsOf(spec, [value]);
  return el("table", { class: "map", "data-map": spec.name },
    el("tbody", {}, ...parts.map((p) => el("tr", { "data-part": p.name },
      el("th", { scope: "row", text: partLabel(spec.name, p.name) }),
      el("td", {}, cell(spec, p, value[p.name]))))));
}

function sizeText(bytes) {
  const n = Number(bytes);
  if (!Number.isFinite(n)) return "";
  if (n < 1000) return n + " B";
  if (n < 1e6) return (n / 1e3).toFixed(1) + " kB";
  return (n / 1e6).toFixed(1) + " MB";
}

// Photos as the server's thumbnails (linking to the whole photo), audio
// with the browser's player (ranges, so it seeks without the whole file),
// anything else as a link to save it. Bytes not on the server yet say so.
function attachmentsView(id, items) {
  if (!Array.isArray(items) || items.length === 0) return absent();
  return el("div", { class: "attachment-list" }, ...items.map((item) => {
    const sha = String(item.sha256 || "");
    if (!/^[0-9a-f]{64}$/.test(sha)) return null;
    const url = "/review/api/records/" + encodeURIComponent(id) + "/attachments/" + sha;
    const mime = String(item.mime || "");
    const name = String(item.name || sha.slice(0, 12));
    const caption = el("figcaption", { text: name + " (" + sizeText(item.size_bytes) + ")" });
    const pending = () => el("span", { class: "pending", text: t("attachment.pending") });
    if (/^image\/(jpeg|png|webp)$/.test(mime)) {
      const img = el("img", { src: url + "?thumb=1", alt: name, loading: "lazy" });
      const link = el("a", { href: url, target: "_blank", rel: "noopener" }, img);
      img.addEventListener("error", () => link.replaceWith(pending()));
      return el("figure", { class: "attachment photo", "data-sha": sha }, link, caption);
    }
    if (mime.startsWith("audio/")) {
      const audio = el("audio", { controls: true, preload: "none", src: url });
      audio.addEventListener("error", () => audio.replaceWith(pending()));
      return el("figure", { class: "attachment audio", "data-sha": sha }, audio, caption);
    }
    return el("figure", { class: "attachment document", "data-sha": sha },
      el("a", { href: url, download: name, text: name }), caption);
  }));
}

function conflictedFields(data) {
  return new Set((data.conflicts || []).map((c) => String(c.path).split(".")[0]));
}

function fieldsView(data) {
  drawnRecord = String(data.id || "");
  const kind = data.header && data.header.kind;
  const fields = data.fields || {};
  const specs = (SCHEMA[kind] || []).slice();
  for (const key of Object.keys(fields)) {
    if (key === "review" || key === "header" || specs.some((s) => s.name === key)) continue;
    const v = fields[key];
    specs.push(S(key, Array.isArray(v) ? "list" : v && typeof v === "object" ? "map" : "str"));
  }
  const conflicted = conflictedFields(data);
  const rows = [];
  const blocks = [];
  for (const spec of specs) {
    const value = fields[spec.name];
    const marked = conflicted.has(spec.name) ? " has-conflict" : "";
    if (spec.parts === ATTACHMENT) {
      blocks.push(el("section", { class: "field-block attachments" + marked, "data-field": spec.name },
        el("h4", { text: fieldLabel(spec.name) }),
        attachmentsView(data.id, value)));
    } else if (spec.type === "list" || spec.type === "map") {
      blocks.push(el("section", { class: "field-block" + marked, "data-field": spec.name },
        el("h4", { text: fieldLabel(spec.name) }),
        spec.type === "list" ? listTable(spec, value) : mapTable(spec, value)));
    } else {
      rows.push(el("tr", { class: marked.trim() || null, "data-field": spec.name }, el("th", { scope: "row", text: fieldLabel(spec.name) }), el("td", {}, scalar(spec.type, value))));
    }
  }
  return el("div", { id: "fields" }, el("table", { class: "fields" }, el("tbody", {}, ...rows)), ...blocks);
}

// `place`, `headcount.women`, `action_items.1.status`.
function pathSpec(kind, path) {
  const parts = String(path).split(".");
  const top = (SCHEMA[kind] || []).find((s) => s.name === parts[0]);
  if (!top) return { label: String(path), type: "str" };
  if (parts.length === 1) return { label: fieldLabel(top.name), type: top.type };
  const last = parts[parts.length - 1];
  const part = top.parts.find((p) => p.name === last);
  const middle = parts.length === 3 ? " \u203a " + t("record.item", { n: Number(parts[1]) + 1 }) : "";
  return { label: fieldLabel(top.name) + middle + " \u203a " + partLabel(top.name, last), type: part ? part.type : "str" };
}

function valueText(type, value) {
  if (type === "time" && /^-?\d+$/.test(String(value))) return when(Number(value));
  if (type === "enum") return enumLabel(value);
  if (type === "bool") return value === "true" ? t("value.yes") : value === "false" ? t("value.no") : String(value);
  return String(value);
}

function deviceOf(v) {
  if (typeof v.device_name === "string" && v.device_name) return v.device_name;
  if (typeof v.device === "string" && v.device) return t("device.short", { id: shortId(v.device) });
  return t("device.short", { id: shortId(v.actor) });
}

function conflictsView(data, kept) {
  const kind = data.header && data.header.kind;
  return (data.conflicts || []).map((c) => {
    const spec = pathSpec(kind, c.path);
    const custom = el("input", { "aria-label": t("conflict.new_value", { field: spec.label }), "data-keep": "conflict:" + c.path });
    if (kept["conflict:" + c.path] !== undefined) custom.value = kept["conflict:" + c.path];
    return el("div", { class: "conflict", "data-path": c.path },
      el("strong", { text: t("conflict.title", { field: spec.label }) }),
      ...(c.values || []).map((v) => el("div", { class: "value" },
        el("span", { class: "v", text: valueText(spec.type, v.value) }),
        el("span", { class: "by" }, tn("conflict.by", { user: v.user || t("conflict.unknown_user"), device: deviceOf(v), time: when(v.time * 1000) })),
        button(t("conflict.use"), "", () => resolve(c.path, v.value)))),
      el("div", { class: "value" }, custom, button(t("conflict.set"), "", () => resolve(c.path, custom.value))));
  });
}

function historyView(data) {
  return el("table", { id: "history" },
    el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: t("history.when") }), el("th", { scope: "col", text: t("history.received") }),
      el("th", { scope: "col", text: t("history.who") }), el("th", { scope: "col", text: t("history.device") }),
      el("th", { scope: "col", text: t("history.what") }))),
    el("tbody", {}, ...(data.history || []).slice().reverse().map((h) => el("tr", h.clock_implausible ? { class: "clock-implausible" } : {},
      el("td", { text: when(h.time * 1000) + (h.clock_implausible ? " " + t("history.implausible") : "") }),
      el("td", { text: typeof h.received_at_ms === "number" ? when(h.received_at_ms) : "" }),
      el("td", { text: h.user || t("conflict.unknown_user") }),
      el("td", { text: deviceOf(h) }),
      el("td", { text: (h.message || "") + ((h.fields || []).length ? " (" + h.fields.map(fieldLabel).join(", ") + ")" : "") })))));
}

function approveBlock(data) {
  if ((data.conflicts || []).length) return t("review.why_conflicts");
  if (data.review_state === "approved") return t("review.why_approved");
  return "";
}

// Inputs a person may be typing in keep their text and focus when the
// record is drawn again (a live change, a language switch).
function keptInputs() {
  const kept = {};
  for (const node of $("record").querySelectorAll("[data-keep]")) kept[node.dataset.keep] = node.value;
  const active = document.activeElement;
  if (active && active.dataset && active.dataset.keep && $("record").contains(active)) {
    kept.focus = { key: active.dataset.keep, start: active.selectionStart, end: active.selectionEnd };
  }
  return kept;
}

function restoreFocus(kept) {
  if (!kept.focus) return;
  for (const node of $("record").querySelectorAll("[data-keep]")) {
    if (node.dataset.keep !== kept.focus.key) continue;
    node.focus();
    try { node.setSelectionRange(kept.focus.start, kept.focus.end); } catch (_) { /* not a text input */ }
  }
}

function renderRecord(data) {
  const started = performance.now();
  const view = $("record");
  const sameRecord = desk.current && desk.current.id === data.id && view.querySelector("[data-keep]");
  const kept = sameRecord ? keptInputs() : {};
  desk.current = data;
  const header = data.header || {};
  const comments = el("ul", { id: "comments" },
    ...(data.review_comments || []).map((c) => el("li", {}, tn("review.comment_line", { by: c.by, text: c.text }))));
  const comment = el("textarea", { id: "return-comment", "aria-label": t("review.comment_aria"), "data-keep": "return-comment" });
  if (kept["return-comment"] !== undefined) comment.value = kept["return-comment"];
  const why = approveBlock(data);
  const approve = button(t("review.approve"), "primary", () => ask("approved"), "approve");
  if (why) {
    approve.disabled = true;
    approve.setAttribute("aria-describedby", "approve-why");
  }
  const decide = el("div", { class: "decide" },
    el("label", { for: "return-comment", text: t("review.comment_label") }), comment,
    el("div", { class: "buttons" }, approve, button(t("review.return"), "warn", () => ask("returned"), "return")),
    el("p", { id: "approve-why", class: "why", hidden: !why, text: why }),
    el("p", { id: "decision-status", class: "status", role: "status" }));
  const conflicts = conflictsView(data, kept);
  const parts = [
    el("h2", { id: "record-title" }, kindLabel(header.kind || "record") + " \u00b7 ", el("bdi", { text: recordTitle(data) })),
    el("p", { class: "meta" },
      tn("record.meta_area", { area: header.area || "" }), " \u00b7 ",
      tn("record.meta_by", { user: header.created_by_user || "" }), " \u00b7 ",
      el("bdi", { text: when(header.created_at) }), " \u00b7 ", t("record.review") + " ",
      el("strong", { id: "review-state", "data-state": data.review_state, text: enumLabel(data.review_state) })),
    data.clock ? el("p", { id: "record-clock", class: "clock-flag", text: t("clock.flag", { times: data.clock.times, days: (data.clock.ahead_ms_max / 86400000).toFixed(1) }) + "; " + t("clock.note") }) : null,
    el("h3", { text: t("record.fields") }), fieldsView(data),
    el("h3", { id: "conflicts-title", text: conflicts.length ? t("record.conflicts") : t("record.no_conflicts") }), ...conflicts,
    el("h3", { text: t("record.review_section") }), comments, decide,
    el("h3", { text: t("record.history") }), historyView(data)];
  view.replaceChildren(...parts.filter((p) => p));
  restoreFocus(kept);
  mark("baraza:record-render", started);
}

async function openRecord(id, quiet) {
  const { status, data } = await api("GET", "records/" + encodeURIComponent(id));
  if (!quiet || (desk.current && desk.current.id === id)) {
    if (status !== 200 || !data) {
      if (!quiet) $("record").replaceChildren(el("p", { class: "error", text: t("record.error", { status }) }));
      return;
    }
    // A refresh that finds the record as drawn leaves the page alone
    // (nothing moves under the supervisor's pointer).
    const seen = JSON.stringify(data);
    if (quiet && seen === desk.currentSeen) return;
    desk.currentSeen = seen;
    renderRecord(data);
  }
}

async function resolve(path, value) {
  const id = desk.current.id;
  const { status, data } = await api("POST", "records/" + encodeURIComponent(id) + "/resolve", { path, value });
  if (status === 200) await openRecord(id);
  else $("decision-status").textContent = (data && data.error) || t("review.not_saved", { status });
}

// ---- Decisions: confirm, then a few seconds to undo ------------------

function ask(decision) {
  if (!desk.current || desk.dialog) return;
  const status = $("decision-status");
  if (decision === "approved") {
    const why = approveBlock(desk.current);
    if (why) {
      if (status) status.textContent = why;
      return;
    }
  }
  const comment = $("return-comment") ? $("return-comment").value.trim() : "";
  desk.dialog = { decision, id: desk.current.id, title: recordTitle(desk.current), back: document.activeElement };
  $("confirm-title").textContent = t(decision === "approved" ? "confirm.approve_title" : "confirm.return_title");
  $("confirm-record").textContent = kindLabel(desk.current.header && desk.current.header.kind) + " \u00b7 " + desk.dialog.title;
  $("confirm-ok").textContent = t(decision === "approved" ? "confirm.ok_approve" : "confirm.ok_return");
  $("confirm-ok").className = decision === "approved" ? "primary" : "warn";
  $("confirm-comment-row").hidden = decision !== "returned";
  $("confirm-comment").value = comment;
  $("confirm-error").textContent = "";
  $("confirm").showModal();
  if (decision === "returned") $("confirm-comment").focus();
  else $("confirm-ok").focus();
}

function closeDialog(confirmed) {
  const asked = desk.dialog;
  if (!asked) return;
  let comment = "";
  if (confirmed && asked.decision === "returned") {
    comment = $("confirm-comment").value.trim();
    if (!comment) {
      $("confirm-error").textContent = t("review.comment_needed");
      $("confirm-comment").focus();
      return;
    }
  }
  desk.dialog = null;
  if ($("confirm").open) $("confirm").close();
  $("confirm-comment").value = "";
  if (asked.back && document.contains(asked.back)) asked.back.focus();
  if (confirmed) schedule(asked.id, asked.decision, comment, asked.title);
}

function schedule(id, decision, comment, title) {
  if (desk.pending) sendPending();
  const pending = { id, decision, comment, title, due: Date.now() + UNDO_MS };
  pending.timer = setTimeout(sendPending, UNDO_MS);
  pending.tick = setInterval(renderPending, 500);
  desk.pending = pending;
  renderPending();
}

function renderPending() {
  const p = desk.pending;
  if (!p) {
    $("pending").hidden = true;
    return;
  }
  const seconds = Math.max(0, Math.ceil((p.due - Date.now()) / 1000));
  $("pending-text").replaceChildren(p.decision === "approved"
    ? tn("pending.approve", { title: p.title, s: seconds })
    : tn("pending.return", { title: p.title, s: seconds }));
  $("pending").hidden = false;
}

function undo() {
  const p = desk.pending;
  if (!p) return;
  clearTimeout(p.timer);
  clearInterval(p.tick);
  desk.pending = null;
  renderPending();
  const status = $("decision-status");
  if (status && desk.current && desk.current.id === p.id) status.textContent = t("pending.undone");
  else $("queue-status").textContent = t("pending.undone");
}

// A confirmed decision leaves its undo window early when the page is left
// or signed out of: the supervisor meant it.
function takePending() {
  const p = desk.pending;
  if (!p) return null;
  clearTimeout(p.timer);
  clearInterval(p.tick);
  desk.pending = null;
  renderPending();
  return p;
}

function postDecision(p, csrf, keepalive) {
  const body = { decision: p.decision };
  if (p.comment) body.comment = p.comment;
  return fetch("/review/api/records/" + encodeURIComponent(p.id) + "/decision", {
    method: "POST",
    headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrf },
    credentials: "same-origin",
    keepalive,
    body: JSON.stringify(body),
  });
}

window.addEventListener("pagehide", () => {
  const waiting = takePending();
  if (waiting) postDecision(waiting, desk.csrf, true).catch(() => {});
});

async function sendPending() {
  const p = desk.pending;
  if (!p) return;
  clearTimeout(p.timer);
  clearInterval(p.tick);
  desk.pending = null;
  renderPending();
  const body = { decision: p.decision };
  if (p.comment) body.comment = p.comment;
  const { status, data } = await api("POST", "records/" + encodeURIComponent(p.id) + "/decision", body);
  const here = desk.current && desk.current.id === p.id;
  let message;
  if (status === 200) message = t(p.decision === "approved" ? "review.approved" : "review.returned");
  else if (data && data.rule === "unresolved_conflict") message = t("review.unresolved_conflict");
  else message = t("review.not_saved", { status }) + (data && data.error ? " " + data.error : "");
  if (here) {
    const typed = $("return-comment");
    if (status === 200 && p.decision === "returned" && typed && typed.value.trim() === p.comment) typed.value = "";
    await openRecord(p.id, true);
    const shown = $("decision-status");
    if (shown) shown.textContent = message;
  } else {
    $("queue-status").textContent = message;
  }
  loadQueue();
}

// ---- The report ------------------------------------------------------

function table(id, heads, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: String(c) }))))));
}

function days(v) {
  return typeof v === "number" ? t("report.days", { n: v.toFixed(1) }) : t("report.no_data");
}

function percent(v) {
  if (typeof v !== "number") return t("report.no_data");
  return i18n.number ? i18n.number.format(Math.round(v * 100) / 100) : Math.round(v * 100) + "%";
}

async function loadReport() {
  const params = new URLSearchParams();
  const area = $("f-area").value.trim();
  if (area) params.set("area", area);
  const { status, data } = await api("GET", "indicators?" + params.toString());
  if (status !== 200 || !data) {
    desk.report = null;
    $("report-body").replaceChildren(el("p", { class: "error", text: t("report.error", { status }) }));
    return;
  }
  desk.report = Object.assign({ area }, data);
  renderReport(desk.report);
}

function renderReport(data) {
  const area = data.area;
  $("report-body").replaceChildren(
    el("h3", { text: t("report.meetings") }),
    table("report-meetings", [t("report.area"), t("report.month"), t("report.held"), t("report.attendance")],
      (data.meetings || []).map((m) => [m.area, m.month, m.held, m.attendance])),
    el("h3", { text: t("report.concerns") }),
    table("report-concerns", [t("report.topic"), t("report.times")], Object.entries(data.concerns_by_topic || {})),
    el("h3", { text: t("report.feedback") }),
    table("report-feedback", [t("report.category"), t("report.status"), t("report.count")],
      (data.feedback || []).map((f) => [enumLabel(f.category), enumLabel(f.status), f.count])),
    el("h3", { text: t("report.handling") }),
    table("report-handling", [t("report.measure"), t("report.value")], [
      [t("report.median_ack"), days(data.median_days_to_acknowledged)],
      [t("report.median_resolved"), days(data.median_days_to_resolved)],
      [t("report.decided"), data.decided],
      [t("report.returned_once"), data.returned_at_least_once],
      [t("report.share_returned"), percent(data.share_returned)],
    ]));
  const links = ["meeting", "patrol_note", "feedback"].map((k) =>
    el("a", { href: "/review/api/export.csv?kind=" + k + (area ? "&area=" + encodeURIComponent(area) : ""), text: t("report.csv", { kind: kindLabel(k) }) }));
  links.push(el("a", { href: "/review/api/export.geojson" + (area ? "?area=" + encodeURIComponent(area) : ""), text: t("report.geojson") }));
  $("exports").replaceChildren(...links);
}

// ---- Views -----------------------------------------------------------

function renderToggle() {
  const report = desk.view === "report";
  const toggle = $("report-toggle");
  toggle.setAttribute("aria-pressed", String(report));
  toggle.textContent = report ? t("nav.queue") : t("nav.report");
}

// Queue and report take the same place: one shows, the other is gone.
function showView(view, focus) {
  desk.view = view;
  const report = view === "report";
  $("desk").hidden = report;
  $("report").hidden = !report;
  renderToggle();
  if (report) {
    $("report-body").replaceChildren();
    $("exports").replaceChildren();
    loadReport();
    if (focus) $("report-title").focus();
  } else if (focus) {
    const items = $("queue").children;
    if (desk.selected >= 0 && items[desk.selected]) items[desk.selected].focus();
    else $("queue-title").focus();
  }
}

// ---- Keys ------------------------------------------------------------

function typing(target) {
  return ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

document.addEventListener("keydown", (e) => {
  if (desk.dialog) return;
  if (!desk.signedIn || $("desk").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  if (typing(e.target)) {
    if (e.key === "Escape") e.target.blur();
    return;
  }
  if (e.key === "j") select(Math.min(desk.selected + 1, desk.rows.length - 1), false);
  else if (e.key === "k") select(Math.max(desk.selected - 1, 0), false);
  else if (e.key === "Enter" && desk.selected >= 0 && e.target.tagName !== "BUTTON" && e.target.tagName !== "A") openRecord(desk.rows[desk.selected].id);
  else if (e.key === "a" && desk.current) ask("approved");
  else if (e.key === "r" && desk.current) ask("returned");
  else if (e.key === "u" && desk.pending) undo();
  else if (e.key === "/") $("f-q").focus();
  else return;
  e.preventDefault();
});

document.addEventListener("DOMContentLoaded", async () => {
  const dialog = $("confirm");
  dialog.addEventListener("keydown", (e) => {
    // The desk's own keys (j, k, a, Enter) stay out of the dialog.
    e.stopPropagation();
    if (e.key === "Escape") {
      e.preventDefault();
      closeDialog(false);
    } else if (e.key === "Enter" && e.target !== $("confirm-cancel")) {
      e.preventDefault();
      closeDialog(true);
    }
  });
  dialog.addEventListener("cancel", (e) => {
    e.preventDefault();
    closeDialog(false);
  });
  $("confirm-ok").addEventListener("click", () => closeDialog(true));
  $("confirm-cancel").addEventListener("click", () => closeDialog(false));
  $("undo").addEventListener("click", undo);
  $("lang").addEventListener("change", () => setLang($("lang").value, true));
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    const { status, data } = await api("POST", "login", { user: $("user").value, password: $("password").value });
    $("password").value = "";
    if (status === 200) signedIn(data);
    else $("signin-error").textContent = (data && data.error) || t("signin.failed", { status });
  });
  $("report-toggle").addEventListener("click", () => showView(desk.view === "report" ? "queue" : "report", true));
  $("signout").addEventListener("click", async () => {
    const csrf = desk.csrf;
    const waiting = takePending();
    // The page forgets the session first; the server is told after: a
    // decision confirmed and still in its undo window goes first.
    signedOut();
    $("user").value = "";
    try {
      if (waiting) await postDecision(waiting, csrf, false);
      await fetch("/review/api/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        credentials: "same-origin",
        body: "{}",
      });
    } catch (_) { /* the cookie expires on its own */ }
  });
  for (const id of ["f-kind", "f-state"]) $(id).addEventListener("change", loadQueue);
  for (const id of ["f-area", "f-q"]) $(id).addEventListener("input", () => {
    clearTimeout(desk.typingTimer);
    desk.typingTimer = setTimeout(loadQueue, 300);
  });
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); loadQueue(); });
  await setLang(chooseLang(), false);
  // A session from before a reload carries on.
  const { status, data } = await api("GET", "session");
  if (status === 200 && data) signedIn(data);
  else signedOut();
});
