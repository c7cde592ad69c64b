// The esflow console: polls `state` (JSON) and redraws. Plain DOM, no library: the API may run offline.
// Every value from the server goes in through textContent, never as HTML (dead-letter errors are
// whatever a producer sent).
"use strict";

const REFRESH_MS = 2000;
const STALE_AFTER_MS = 3 * REFRESH_MS;
const OUTCOMES = ["accepted", "rejected", "dead_lettered"];
const COLOURS = { accepted: "var(--ok)", rejected: "var(--warn)", dead_lettered: "var(--bad)" };

let lastAnswerAt = null; // Date.now() of the last good answer
let lastError = null;
let inFlight = false;

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function rate(value) {
  if (value === undefined || value === null) return "–";
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function count(value) {
  return value === undefined || value === null ? "–" : Number(value).toLocaleString("en");
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  if (seconds < 1) return "<1 s";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function utc(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "") : "–";
}

function replaceRows(tbody, rows, columns, emptyText) {
  tbody.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const row of rows) tbody.append(row);
}

function drawProcessor(p) {
  $("window").textContent = p.window_s;
  for (const name of [...OUTCOMES, "replayed"]) $(`rate-${name}`).textContent = rate(p.per_second[name]);
  const svg = $("series");
  svg.replaceChildren();
  const peakTotal = Math.max(0, ...p.series.map((s) => OUTCOMES.reduce((sum, o) => sum + (s[o] || 0), 0)));
  const peak = Math.max(1, peakTotal);
  const width = 600 / Math.max(1, p.series.length);
  p.series.forEach((second, i) => {
    let y = 80;
    for (const o of OUTCOMES) {
      const h = ((second[o] || 0) / peak) * 78;
      if (h <= 0) continue;
      y -= h;
      const bar = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      bar.setAttribute("x", (i * width + 0.5).toFixed(1));
      bar.setAttribute("y", y.toFixed(1));
      bar.setAttribute("width", Math.max(1, width - 1).toFixed(1));
      bar.setAttribute("height", h.toFixed(1));
      bar.setAttribute("fill", COLOURS[o]);
      svg.append(bar);
    }
  });
  $("series-peak").textContent = count(peakTotal);
  $("since").textContent = utc(p.since);
  $("totals").textContent =
    `${count(p.totals.accepted)} accepted, ${count(p.totals.rejected)} rejected, ` +
    `${count(p.totals.dead_lettered)} dead-lettered, ${count(p.totals.replayed)} replayed` +
    (p.caught_up ? "" : " (still reading the topic)");
}

function drawProjections(list) {
  const tbody = $("projection-rows");
  if (list === null) {
    replaceRows(tbody, [], 9, "unavailable: PostgreSQL did not answer (see above)");
    return;
  }
  const rows = list.map((p) => {
    const tr = el("tr");
    tr.dataset.projection = p.projection;
    tr.dataset.state = p.state;
    tr.append(el("th", p.projection));
    tr.lastChild.scope = "row";
    tr.append(el("td", p.version === null ? "–" : `v${p.version} ${p.state}`));
    const health = p.health || p.state;
    tr.append(el("td", health, `health ${health.replace(/\s+/g, "-")}`));
    tr.append(el("td", count(p.records_left), "num records-left"));
    tr.append(el("td", count(p.events_applied), "num events-applied"));
    tr.append(el("td", p.newest_event_age_s === null || p.newest_event_age_s === undefined ? "–" : `${duration(p.newest_event_age_s)} ago`, "num"));
    tr.append(el("td", p.last_write_age_s === null || p.last_write_age_s === undefined ? "–" : `${duration(p.last_write_age_s)} ago`, "num"));
    tr.append(el("td", count(p.dead_letters), p.dead_letters ? "num bad" : "num"));
    const notes = [];
    if (p.state === "building" && p.progress !== null && p.progress !== undefined) {
      notes.push(`rebuild ${(p.progress * 100).toFixed(1)}%, ETA ${duration(p.eta_s)}`);
    }
    for (const h of p.halted || []) notes.push(`halted ${h}`);
    if (p.error) notes.push(p.error);
    tr.append(el("td", notes.join("; "), "notes"));
    return tr;
  });
  replaceRows(tbody, rows, 9, "no projection installed (run `esflow db migrate`)");
}

function drawDeadLetters(d) {
  $("dead-total").textContent = d.counted ? count(d.total) : `${count(d.total)} so far (still counting)`;
  const rows = d.latest.map((x) => {
    const tr = el("tr");
    tr.append(el("td", utc(x.at)));
    tr.append(el("td", x.reason, "reason"));
    tr.append(el("td", x.offset === null ? x.topic : `${x.topic}[${x.partition}]@${x.offset}`));
    tr.append(el("td", x.error, "error"));
    return tr;
  });
  replaceRows($("dead-rows"), rows, 4, "none");
}

function drawProcesses(list) {
  const body = $("process-body");
  body.replaceChildren();
  if (list === null) {
    body.append(el("p", "not running: the process managers' read model (bi.process_instances) is not installed.", "empty not-running"));
    return;
  }
  if (list.length === 0) {
    body.append(el("p", "no process instance yet", "empty"));
    return;
  }
  const table = el("table");
  const head = el("tr");
  for (const h of ["process", "status", "instances"]) head.append(el("th", h, h === "instances" ? "num" : ""));
  table.append(el("thead"));
  table.firstChild.append(head);
  const tbody = el("tbody");
  for (const r of list) {
    const tr = el("tr");
    tr.append(el("td", r.type || "–"));
    tr.append(el("td", r.status, `status ${r.status}`));
    tr.append(el("td", count(r.instances), "num"));
    tbody.append(tr);
  }
  table.append(tbody);
  body.append(table);
}

function drawProblems(problems) {
  const list = $("problems");
  list.replaceChildren(...problems.map((p) => el("li", p)));
  list.hidden = problems.length === 0;
}

function draw(state) {
  drawProblems(state.problems);
  drawProcessor(state.processor);
  drawProjections(state.projections);
  drawDeadLetters(state.dead_letters);
  drawProcesses(state.process_instances);
  document.body.dataset.generatedAt = state.generated_at;
}

// Ticks every second, so "updated 9 s ago" and the stale banner move even when requests hang.
function showFreshness() {
  const freshness = $("freshness");
  const stale = $("stale");
  if (lastAnswerAt === null) {
    freshness.textContent = lastError ? `no answer yet: ${lastError}` : "connecting…";
    freshness.className = lastError ? "freshness stale" : "freshness";
    stale.hidden = true;
    return;
  }
  const age = Date.now() - lastAnswerAt;
  freshness.textContent = `updated ${duration(age / 1000)} ago`;
  const isStale = age > STALE_AFTER_MS;
  freshness.className = isStale ? "freshness stale" : "freshness live";
  document.body.classList.toggle("is-stale", isStale);
  stale.hidden = !isStale;
  if (isStale) {
    stale.textContent =
      `Stale: the figures below are ${duration(age / 1000)} old; the console's endpoint is not answering` +
      (lastError ? ` (${lastError})` : "") + ". Retrying every 2 s.";
  }
}

// The state is for operators: the API checks a bearer token on every poll. The token stays in this
// tab's sessionStorage (gone when the tab closes) and is sent only to this page's own origin.
const TOKEN_KEY = "esflow-console-token";

function authorization() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function askForToken(response) {
  let why = "";
  try {
    why = (await response.json()).errors[0].message;
  } catch (_) {
    why = `HTTP ${response.status}`;
  }
  $("signin-why").textContent = sessionStorage.getItem(TOKEN_KEY) ? `The token was refused (${why}).` : "";
  $("signin").hidden = false;
}

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("signin").hidden = true;
  refresh();
});

async function refresh() {
  if (inFlight) return;
  inFlight = true;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REFRESH_MS * 2);
  try {
    const response = await fetch("state", { cache: "no-store", signal: controller.signal, headers: authorization() });
    if (response.status === 401 || response.status === 403) {
      await askForToken(response);
      throw new Error(`HTTP ${response.status}: an operator token is needed`);
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
    lastAnswerAt = Date.now();
    lastError = null;
  } catch (err) {
    lastError = err.name === "AbortError" ? "timed out" : err.message;
  } finally {
    clearTimeout(timer);
    inFlight = false;
    showFreshness();
  }
}

$("refresh").textContent = REFRESH_MS / 1000;
refresh();
setInterval(refresh, REFRESH_MS);
setInterval(showFreshness, 1000);
