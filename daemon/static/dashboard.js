// claude-relay's live dashboard: reads GET /dashboard/events (server-sent events) through fetch,
// because EventSource cannot send the API key header. Everything shown is set as text
// (textContent), never as HTML: screens and errors can hold anything a model or client wrote.
"use strict";

const KEY_STORE = "claude-relay-api-key";
const RETRY_MS = 2000;
const screens = new Map(); // session id -> <pre>

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setConnection(text, cls) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = "badge " + (cls || "");
}

function keyHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "x-api-key": key } : {};
}

async function errorText(res) {
  try {
    const body = await res.json();
    return (body.error && body.error.message) || res.statusText;
  } catch (e) {
    return res.statusText;
  }
}

function askKey(message) {
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-message").textContent = message;
  $("key").focus();
  setConnection("API key needed", "down");
}

function retry() {
  setTimeout(connect, RETRY_MS);
}

async function connect() {
  setConnection("connecting");
  let res;
  try {
    res = await fetch("/dashboard/events", { headers: keyHeaders(), cache: "no-store" });
  } catch (e) {
    setConnection("relay unreachable, retrying", "down");
    retry();
    return;
  }
  if (res.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    askKey(await errorText(res));
    return;
  }
  if (!res.ok) {
    setConnection("error " + res.status + ": " + (await errorText(res)), "down");
    retry();
    return;
  }
  $("key-form").hidden = true;
  $("main").hidden = false;
  setConnection("live", "live");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    // the connection broke; reconnect below
  }
  setConnection("disconnected, retrying", "down");
  retry();
}

function handleFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith(":")) continue; // keepalive comment
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (!data.length) return;
  const body = JSON.parse(data.join("\n"));
  if (event === "state") renderState(body);
  else if (event === "screen") renderScreen(body);
  else if (event === "gone") dropScreen(body.id);
}

function time(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function ms(value) {
  return value === null || value === undefined ? "" : Math.round(value) + " ms";
}

function fillList(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    dl.append(el("dt", name), el("dd", value === null || value === undefined ? "—" : value));
  }
}

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr");
    const td = el("td", "none", "hint");
    td.colSpan = table.tHead.rows[0].cells.length;
    tr.append(td);
    body.append(tr);
  }
  for (const row of rows) body.append(row);
}

function renderState(s) {
  $("demo").hidden = !s.relay.demo;
  $("uptime").textContent = "up " + s.relay.uptime + " s";
  const p = s.pool;
  const full = p.busy >= p.max_busy && p.queued >= p.max_queue;
  const admission = $("admission");
  admission.textContent = full
    ? "FULL: new turns are refused with 529 overloaded_error"
    : "accepting turns";
  admission.className = "admission" + (full ? " full" : "");
  fillList($("pool"), [
    ["busy", p.busy + " / " + p.max_busy],
    ["queued", p.queued + " / " + p.max_queue],
    ["warm", p.warm],
    ["starting", p.starting],
    ["sticky", p.sticky + " / " + p.max_sticky],
    ["parked", p.parked],
    ["spawned", p.spawned],
    ["died while idle", p.deaths],
  ]);
  const lic = s.license.license;
  fillList($("login"), [
    ["claude", s.claude.version ? "v" + s.claude.version : null],
    ["available", s.claude.error ? "no: " + s.claude.error : "yes"],
    ["logged in", lic.valid ? "yes" : "no"],
    ["method", lic.method],
    ["account", lic.account],
    ["plan", lic.subscriptionType],
    ["note", lic.message],
  ]);
  fillTable(
    $("turns"),
    s.turns.map((t) => {
      const tr = el("tr", null, "turn" + (t.outcome === "ok" || t.outcome === "running" ? "" : " failed"));
      tr.dataset.status = t.status === null ? "" : String(t.status);
      tr.append(
        el("td", time(t.started)),
        el("td", t.model),
        el("td", t.stream ? "yes" : "no"),
        el("td", t.session_id || ""),
        el("td", t.status === null ? "…" : t.status, "status"),
        el("td", t.outcome),
        el("td", ms(t.first_text_ms)),
        el("td", ms(t.duration_ms)),
        el("td", t.error ? t.error_type + ": " + t.error : "", "error"),
      );
      return tr;
    }),
  );
  fillTable(
    $("sessions"),
    s.sessions.map((x) => {
      const tr = el("tr");
      tr.append(
        el("td", x.id),
        el("td", x.state),
        el("td", x.pid || ""),
        el("td", x.model),
        el("td", x.turns),
        el("td", time(x.last_used)),
      );
      return tr;
    }),
  );
  fillTable(
    $("parked"),
    s.parked.map((x) => {
      const tr = el("tr");
      tr.append(el("td", x.session), el("td", x.sticky_id || ""), el("td", x.tool_use_ids.join(", ")));
      return tr;
    }),
  );
  const live = new Set();
  for (const x of s.live) {
    live.add(x.id);
    panel(x.id).querySelector("h3").textContent =
      x.role + " · " + x.state + " · pid " + x.pid + (x.sticky_id ? " · id " + x.sticky_id : "") +
      " · " + x.turns + " turns";
  }
  for (const id of screens.keys()) if (!live.has(id)) dropScreen(id);
  $("no-screens").hidden = screens.size > 0;
}

function panel(id) {
  let pre = screens.get(id);
  if (!pre) {
    const box = el("div", null, "screen-panel");
    box.dataset.sessionId = id;
    pre = el("pre", "", "screen");
    box.append(el("h3", id), pre);
    $("screens").append(box);
    screens.set(id, pre);
    $("no-screens").hidden = true;
  }
  return pre.parentElement;
}

function renderScreen(body) {
  const pre = panel(body.id).querySelector("pre");
  pre.textContent = body.rows.join("\n");
  pre.dataset.seq = String(body.seq);
}

function dropScreen(id) {
  const pre = screens.get(id);
  if (pre) pre.parentElement.remove();
  screens.delete(id);
  $("no-screens").hidden = screens.size > 0;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key").value.trim());
  $("key").value = "";
  connect();
});

connect();
