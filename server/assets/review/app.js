// The review desk. Everything the page shows is built with textContent
// and never parsed as markup: record text is whatever a tablet typed.
"use strict";

const desk = {
  csrf: "",
  rows: [],
  selected: -1,
  current: null,
  seen: new Set(),
  first: true,
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = desk.csrf;
  const response = await fetch("/review/api/" + path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && path !== "login") showSignin();
  return { status: response.status, data };
}

function when(ms) {
  if (typeof ms !== "number") return "";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

// A tablet's clock can be years off; the server notes when it received
// each change and flags records whose claimed times were implausible.
function clockFlag(clock) {
  if (!clock) return null;
  const days = (clock.ahead_ms_max / 86400000).toFixed(1);
  return el("span", { class: "clock-flag", title: "Claimed " + when(clock.claimed_ms),
    text: "clock ahead: " + clock.times + (clock.times === 1 ? " claimed time" : " claimed times") + " up to " + days + " days ahead of the server" });
}

function showSignin() {
  clearInterval(desk.timer);
  $("desk").hidden = true;
  $("report").hidden = true;
  $("report-toggle").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin").hidden = false;
  $("user").focus();
}

function showDesk(who) {
  desk.csrf = who.csrf;
  $("who").textContent = who.user + " \u2014 " + (who.areas || []).join(", ");
  $("signin").hidden = true;
  $("desk").hidden = false;
  $("signout").hidden = false;
  $("report-toggle").hidden = false;
  loadQueue();
  clearInterval(desk.timer);
  // Records that reach the server while the page is open join the queue.
  desk.timer = setInterval(loadQueue, 5000);
}

function query() {
  const params = new URLSearchParams();
  for (const [name, id] of [["kind", "f-kind"], ["state", "f-state"], ["area", "f-area"], ["q", "f-q"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  return params.toString();
}

async function loadQueue() {
  const { status, data } = await api("GET", "records?" + query());
  if (status !== 200) {
    $("queue-status").textContent = "Could not load records (" + status + ").";
    return;
  }
  const rows = data.records.slice().sort((a, b) => b.created_at - a.created_at);
  const keep = desk.selected >= 0 && desk.rows[desk.selected] ? desk.rows[desk.selected].id : null;
  desk.rows = rows;
  desk.selected = keep ? rows.findIndex((r) => r.id === keep) : -1;
  renderQueue();
  $("queue-status").textContent = rows.length + (rows.length === 1 ? " record" : " records");
}

function renderQueue() {
  const list = $("queue");
  const items = desk.rows.map((row, i) => {
    const fresh = !desk.first && !desk.seen.has(row.id);
    const item = el("li", { tabindex: "-1", "data-id": row.id, "aria-selected": String(i === desk.selected) },
      el("div", { class: "kind", text: row.kind.replace("_", " ") + " \u00b7 " + row.area + " \u00b7 " + row.state }),
      el("div", { text: row.created_by + ", " + when(row.created_at) }),
      clockFlag(row.clock),
      fresh ? el("span", { class: "new", text: "new" }) : null);
    item.addEventListener("click", () => select(i, true));
    return item;
  });
  list.replaceChildren(...items);
  for (const row of desk.rows) desk.seen.add(row.id);
  desk.first = false;
}

function select(i, open) {
  if (i < 0 || i >= desk.rows.length) return;
  desk.selected = i;
  const items = $("queue").children;
  for (let j = 0; j < items.length; j++) items[j].setAttribute("aria-selected", String(j === i));
  items[i].focus();
  if (open) openRecord(desk.rows[i].id);
}

function fieldValue(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.length + (value.length === 1 ? " item" : " items");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => k + ": " + fieldValue(v)).join("; ");
  return String(value);
}

async function openRecord(id) {
  const { status, data } = await api("GET", "records/" + encodeURIComponent(id));
  const view = $("record");
  if (status !== 200) {
    view.replaceChildren(el("p", { class: "error", text: "Could not open the record (" + status + ")." }));
    return;
  }
  desk.current = data;
  const header = data.header || {};
  const fields = el("table", { id: "fields" },
    ...Object.entries(data.fields).filter(([k]) => k !== "review").map(([k, v]) =>
      el("tr", { "data-field": k }, el("th", { text: k }), el("td", { text: fieldValue(v) }))));
  const conflicts = data.conflicts.map((c) => {
    const custom = el("input", { "aria-label": "New value for " + c.path });
    return el("div", { class: "conflict", "data-path": c.path },
      el("strong", { text: "Conflict in " + c.path }),
      ...c.values.map((v) => el("div", { class: "value" },
        el("span", { class: "v", text: v.value }),
        el("span", { class: "by", text: (v.user || "unknown") + ", " + when(v.time * 1000) }),
        button("Use this value", "", () => resolve(c.path, v.value)))),
      el("div", { class: "value" }, custom, button("Set", "", () => resolve(c.path, custom.value))));
  });
  const history = el("table", { id: "history" },
    el("tr", {}, el("th", { text: "When (tablet)" }), el("th", { text: "Received" }), el("th", { text: "Who" }), el("th", { text: "What" })),
    ...data.history.slice().reverse().map((h) => el("tr", h.clock_implausible ? { class: "clock-implausible" } : {},
      el("td", { text: when(h.time * 1000) + (h.clock_implausible ? " (implausible)" : "") }),
      el("td", { text: typeof h.received_at_ms === "number" ? when(h.received_at_ms) : "" }),
      el("td", { text: h.user || h.actor.slice(0, 8) }),
      el("td", { text: (h.message || "") + (h.fields.length ? " (" + h.fields.join(", ") + ")" : "") }))));
  const comments = el("ul", { id: "comments" },
    ...(data.review_comments || []).map((c) => el("li", { text: c.by + ": " + c.text })));
  const comment = el("textarea", { id: "return-comment", "aria-label": "What to fix" });
  const decide = el("div", { class: "decide" },
    el("label", { for: "return-comment", text: "Comment (required to return)" }), comment,
    el("div", { class: "buttons" },
      button("Approve", "primary", () => decideOn("approved"), "approve"),
      button("Return with comment", "warn", () => decideOn("returned", comment.value), "return")),
    el("p", { id: "decision-status", class: "status", role: "status" }));
  view.replaceChildren(
    el("h2", { id: "record-title", text: (header.kind || "record").replace("_", " ") + " \u00b7 " + (data.fields.title || data.fields.beat || data.fields.about || data.id) }),
    el("p", { class: "meta", text: "Area " + (header.area || "") + " \u00b7 by " + (header.created_by_user || "") + " \u00b7 " + when(header.created_at) + " \u00b7 review: " }, el("strong", { id: "review-state", text: data.review_state })),
    data.clock ? el("p", { id: "record-clock", class: "clock-flag" }, clockFlag(data.clock).textContent +
      "; times below are as the tablet claimed, beside when the server received each change") : null,
    el("h3", { text: "Fields" }), fields,
    el("h3", { text: conflicts.length ? "Conflicts" : "No conflicts" }), ...conflicts,
    el("h3", { text: "Review" }), comments, decide,
    el("h3", { text: "History" }), history);
}

function table(id, heads, rows) {
  return el("table", { id },
    el("tr", {}, ...heads.map((h) => el("th", { text: h }))),
    ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", { text: String(c) })))));
}

function days(v) {
  return typeof v === "number" ? v.toFixed(1) + " days" : "no data";
}

async function showReport() {
  const params = new URLSearchParams();
  const area = $("f-area").value.trim();
  if (area) params.set("area", area);
  const { status, data } = await api("GET", "indicators?" + params.toString());
  const body = $("report-body");
  if (status !== 200) {
    body.replaceChildren(el("p", { class: "error", text: "Could not load the indicators (" + status + ")." }));
    return;
  }
  body.replaceChildren(
    el("h3", { text: "Meetings held and attendance" }),
    table("report-meetings", ["Area", "Month", "Meetings", "Attendance"],
      data.meetings.map((m) => [m.area, m.month, m.held, m.attendance])),
    el("h3", { text: "Concerns raised, by topic" }),
    table("report-concerns", ["Topic", "Times raised"], Object.entries(data.concerns_by_topic)),
    el("h3", { text: "Feedback by category and status" }),
    table("report-feedback", ["Category", "Status", "Count"],
      data.feedback.map((f) => [f.category, f.status, f.count])),
    el("h3", { text: "Handling" }),
    table("report-handling", ["Measure", "Value"], [
      ["Median time, received to acknowledged", days(data.median_days_to_acknowledged)],
      ["Median time, received to resolved", days(data.median_days_to_resolved)],
      ["Records decided", data.decided],
      ["Returned at least once", data.returned_at_least_once],
      ["Share returned", typeof data.share_returned === "number" ? Math.round(data.share_returned * 100) + "%" : "no data"],
    ]));
  const links = ["meeting", "patrol_note", "feedback"].map((k) =>
    el("a", { href: "/review/api/export.csv?kind=" + k + (area ? "&area=" + encodeURIComponent(area) : ""), text: "CSV: " + k.replace("_", " ") }));
  links.push(el("a", { href: "/review/api/export.geojson" + (area ? "?area=" + encodeURIComponent(area) : ""), text: "GeoJSON: patrol observations" }));
  $("exports").replaceChildren(...links);
}

function toggleReport() {
  const showing = !$("report").hidden;
  $("report").hidden = showing;
  $("desk").hidden = !showing;
  $("report-toggle").textContent = showing ? "Report" : "Queue";
  if (!showing) showReport();
}

function button(label, cls, action, id) {
  const b = el("button", { type: "button", class: cls, text: label });
  if (id) b.id = id;
  b.addEventListener("click", action);
  return b;
}

async function resolve(path, value) {
  const id = desk.current.id;
  const { status, data } = await api("POST", "records/" + encodeURIComponent(id) + "/resolve", { path, value });
  if (status === 200) await openRecord(id);
  else $("decision-status").textContent = (data && data.error) || "Not saved (" + status + ")";
}

async function decideOn(decision, comment) {
  const id = desk.current.id;
  const body = { decision };
  if (comment && comment.trim()) body.comment = comment.trim();
  const { status, data } = await api("POST", "records/" + encodeURIComponent(id) + "/decision", body);
  if (status === 200) {
    await openRecord(id);
    $("decision-status").textContent = decision === "approved" ? "Approved." : "Returned.";
    loadQueue();
  } else {
    $("decision-status").textContent = (data && data.error) || "Not saved (" + status + ")";
  }
}

function typing(target) {
  return ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

document.addEventListener("keydown", (e) => {
  if ($("desk").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  if (typing(e.target)) {
    if (e.key === "Escape") e.target.blur();
    return;
  }
  if (e.key === "j") select(Math.min(desk.selected + 1, desk.rows.length - 1), false);
  else if (e.key === "k") select(Math.max(desk.selected - 1, 0), false);
  else if (e.key === "Enter" && desk.selected >= 0) openRecord(desk.rows[desk.selected].id);
  else if (e.key === "a" && desk.current) decideOn("approved");
  else if (e.key === "r" && desk.current) { e.preventDefault(); $("return-comment").focus(); }
  else if (e.key === "/") { e.preventDefault(); $("f-q").focus(); }
  else return;
});

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    const { status, data } = await api("POST", "login", { user: $("user").value, password: $("password").value });
    $("password").value = "";
    if (status === 200) showDesk(data);
    else $("signin-error").textContent = (data && data.error) || "Sign-in failed (" + status + ")";
  });
  $("report-toggle").addEventListener("click", toggleReport);
  $("signout").addEventListener("click", async () => {
    await api("POST", "logout", {});
    showSignin();
  });
  for (const id of ["f-kind", "f-state"]) $(id).addEventListener("change", loadQueue);
  for (const id of ["f-area", "f-q"]) $(id).addEventListener("input", () => {
    clearTimeout(desk.typingTimer);
    desk.typingTimer = setTimeout(loadQueue, 300);
  });
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); loadQueue(); });
  // A session from before a reload carries on.
  const { status, data } = await api("GET", "session");
  if (status === 200) showDesk(data);
  else showSignin();
});
