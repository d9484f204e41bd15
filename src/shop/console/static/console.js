// The operator console: sign in with an admin account, then services and breakers, sagas and
// their timelines, dead letters, refreshed every few seconds while the page is open.
// Plain JavaScript over the admin API (same origin); the token stays in this tab's sessionStorage.
// Everything the API returns is put on the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 5000;
const TOKEN_KEY = "shop.console.token";
const WHO_KEY = "shop.console.email";
const SAGA_PAGE = 50;
const DEAD_LETTER_PAGE = 100;

const state = { timer: null, busy: false, timeline: null, deadLetter: null };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const td = (...children) => el("td", {}, ...children);
const code = (text) => el("code", {}, text);
const badge = (text) => el("span", { class: `badge badge-${String(text).toLowerCase()}` }, text);
const button = (label, onclick, extra = {}) => el("button", { type: "button", onclick, ...extra }, label);

function when(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
}

function fill(table, rows, empty) {
  const body = $(`${table} tbody`);
  const columns = $(`${table} thead tr`).children.length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colSpan: columns }, empty))]));
}

// -- the API ---------------------------------------------------------------------------------

async function request(method, path, headers, body) {
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, `the shop does not answer (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    let message = `the API answered ${response.status}`;
    if (data && (data.title || data.detail)) {
      message = `${response.status} ${data.title || ""}: ${data.detail || ""}`;
    }
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) message += ` (retry after ${retryAfter} s)`;
    throw new ApiError(response.status, message);
  }
  return data;
}

function api(method, path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  return request(method, path, headers);
}

const denied = (error) => error instanceof ApiError && (error.status === 401 || error.status === 403);

function deniedMessage(error) {
  const who = sessionStorage.getItem(WHO_KEY) || "this account";
  if (error.status === 403) {
    return `${who} is not an admin: the API refused the console's requests (403 Forbidden). ` +
      "Sign in with an admin account.";
  }
  return "Your session has ended (the API answered 401 Unauthorized): sign in again.";
}

// -- signing in and out ----------------------------------------------------------------------

function showSignInError(message) {
  const line = $("#sign-in-error");
  line.textContent = message;
  line.hidden = !message;
}

async function signIn(event) {
  event.preventDefault();
  const email = $("#email").value.trim();
  const password = $("#password").value;
  showSignInError("");
  $("#sign-in-button").disabled = true;
  try {
    const token = await request(
      "POST",
      "/api/v1/auth/token",
      { Accept: "application/json", "Content-Type": "application/json" },
      JSON.stringify({ email, password }),
    );
    sessionStorage.setItem(TOKEN_KEY, token.access_token);
    sessionStorage.setItem(WHO_KEY, email);
    $("#password").value = "";
    await start();
  } catch (error) {
    showSignInError(error.status === 401 ? "Wrong email or password." : `Could not sign in: ${error.message}`);
  } finally {
    $("#sign-in-button").disabled = false;
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WHO_KEY);
  clearInterval(state.timer);
  Object.assign(state, { timer: null, timeline: null, deadLetter: null });
  for (const body of document.querySelectorAll("#console tbody")) body.replaceChildren();
  for (const panel of ["#timeline", "#dead-letter", "#notice"]) $(panel).hidden = true;
  $("#console").hidden = true;
  $("#session").hidden = true;
  $("#sign-in").hidden = false;
  showSignInError(message || "");
}

async function start() {
  // The services view doubles as the access check: a customer's token gets a 403 and no data.
  try {
    await loadServices();
  } catch (error) {
    if (denied(error)) {
      signOut(deniedMessage(error));
      return;
    }
  }
  $("#who").textContent = sessionStorage.getItem(WHO_KEY) || "";
  $("#sign-in").hidden = true;
  $("#session").hidden = false;
  $("#console").hidden = false;
  await refresh();
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
}

// -- the views -------------------------------------------------------------------------------

async function guarded(section, load) {
  const line = $(`${section} .section-error`);
  try {
    await load();
    line.hidden = true;
  } catch (error) {
    if (denied(error)) throw error;
    line.textContent = error.message;
    line.hidden = false;
  }
}

async function refresh() {
  if (state.busy || !sessionStorage.getItem(TOKEN_KEY)) return;
  state.busy = true;
  try {
    const results = await Promise.allSettled([
      guarded("#services", loadServices),
      guarded("#sagas", loadSagas),
      guarded("#timeline", loadTimeline),
      guarded("#dead-letters", loadDeadLetters),
      guarded("#dead-letter", loadDeadLetter),
    ]);
    const refused = results.find((result) => result.status === "rejected");
    if (refused) {
      signOut(deniedMessage(refused.reason));
      return;
    }
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } finally {
    state.busy = false;
  }
}

async function loadServices() {
  const data = await api("GET", "/api/v1/services");
  const rows = [];
  for (const module of Object.keys(data.modules).sort()) {
    const instances = data.modules[module];
    if (instances.length === 0) {
      rows.push(el("tr", { "data-module": module }, td(module), el("td", { colSpan: 4 }, badge("none registered"))));
    }
    for (const instance of instances) {
      rows.push(
        el(
          "tr",
          { "data-module": module, "data-instance": instance.instance_id },
          td(module),
          td(code(instance.instance_id)),
          td(instance.url),
          td(badge(instance.healthy ? "healthy" : "unhealthy")),
          td(when(instance.last_seen)),
        ),
      );
    }
  }
  fill("#instances", rows, "no module is known");
  const breakers = Object.keys(data.breakers).sort().map((name) =>
    el("tr", { "data-breaker": name, "data-state": data.breakers[name] }, td(code(name)), td(badge(data.breakers[name]))),
  );
  fill("#breakers", breakers, "no breaker has been used yet");
}

async function loadSagas() {
  const filter = $("#saga-filter").value;
  const params = new URLSearchParams({ limit: String(SAGA_PAGE) });
  if (filter === "overdue") params.set("overdue", "true");
  else if (filter) params.set("status", filter);
  const [summary, page] = await Promise.all([
    api("GET", "/api/v1/admin/sagas/summary"),
    api("GET", `/api/v1/admin/sagas?${params}`),
  ]);
  const chips = Object.entries(summary.by_status).map(([status, count]) =>
    button(`${status} ${count}`, () => setFilter(status), { class: `chip badge-${status.toLowerCase()}`, "data-status": status }),
  );
  chips.push(button(`overdue ${summary.overdue}`, () => setFilter("overdue"), { class: "chip", "data-status": "overdue" }));
  $("#saga-summary").replaceChildren(...chips);
  const rows = page.items.map((saga) =>
    el(
      "tr",
      { "data-saga-id": saga.id, "data-status": saga.status },
      td(code(saga.id)),
      td(saga.type),
      td(badge(saga.status)),
      td(saga.step || "—"),
      td(when(saga.deadline)),
      td(when(saga.updated_at)),
      td(saga.failure_reason || ""),
      td(
        button("Timeline", () => act(() => openTimeline(saga.id)), { class: "timeline" }),
        saga.status === "COMPENSATION_FAILED" ? button("Retry", () => act(() => retrySaga(saga.id)), { class: "retry" }) : null,
      ),
    ),
  );
  fill("#saga-list", rows, filter ? "no saga matches" : "no saga yet");
  $("#saga-count").textContent = page.next_cursor
    ? `the newest ${page.items.length} shown`
    : `${page.items.length} shown, newest first`;
}

function setFilter(value) {
  $("#saga-filter").value = value;
  act(() => guarded("#sagas", loadSagas));
}

async function loadTimeline() {
  const id = state.timeline;
  if (!id) return;
  const page = await api("GET", `/api/v1/admin/sagas/${encodeURIComponent(id)}/timeline?limit=100`);
  if (state.timeline !== id) return;
  $("#timeline-saga").textContent = id;
  const rows = page.items.map((entry) =>
    el("tr", { "data-step": entry.step, "data-status": entry.status }, td(when(entry.at)), td(entry.step), td(badge(entry.status)), td(entry.detail || "")),
  );
  fill("#timeline", rows, "no step recorded yet");
  $("#timeline").hidden = false;
}

async function openTimeline(id) {
  state.timeline = id;
  $("#timeline-saga").textContent = id;
  fill("#timeline", [], "loading…");
  $("#timeline").hidden = false;
  await guarded("#timeline", loadTimeline);
}

async function retrySaga(id) {
  const saga = await api("POST", `/api/v1/admin/sagas/${encodeURIComponent(id)}/retry`);
  notice(`Saga ${id} retried: it is ${saga.status} now.`);
  await refresh();
}

async function loadDeadLetters() {
  const page = await api("GET", `/api/v1/admin/dead-letters?limit=${DEAD_LETTER_PAGE}`);
  const rows = page.items.map((entry) =>
    el(
      "tr",
      { "data-dead-letter-id": entry.id },
      td(when(entry.failed_at)),
      td(entry.module || ""),
      td(code(entry.message_type)),
      td(code(entry.consumer)),
      td(String(entry.attempts)),
      td(el("span", { class: "error-text" }, entry.error)),
      td(
        button("Show", () => act(() => openDeadLetter(entry.id)), { class: "show" }),
        button("Redrive", () => act(() => redrive(entry.id)), { class: "redrive" }),
      ),
    ),
  );
  fill("#dead-letter-list", rows, "no dead letter: every message was handled");
  $("#dead-letter-count").textContent = page.next_cursor
    ? `the oldest ${page.items.length} shown`
    : `${page.items.length} waiting for an operator`;
}

async function loadDeadLetter() {
  const id = state.deadLetter;
  if (!id) return;
  let entry;
  try {
    entry = await api("GET", `/api/v1/admin/dead-letters/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error.status === 404 && state.deadLetter === id) {
      closeDeadLetter();
      return;
    }
    throw error;
  }
  if (state.deadLetter !== id) return;
  $("#dead-letter-id").textContent = id;
  $("#dead-letter-error").textContent = entry.error;
  $("#dead-letter-envelope").textContent = JSON.stringify(entry.envelope, null, 2);
  $("#dead-letter").hidden = false;
}

async function openDeadLetter(id) {
  state.deadLetter = id;
  $("#dead-letter-id").textContent = id;
  $("#dead-letter-error").textContent = "loading…";
  $("#dead-letter-envelope").textContent = "";
  $("#dead-letter").hidden = false;
  await guarded("#dead-letter", loadDeadLetter);
}

function closeDeadLetter() {
  state.deadLetter = null;
  $("#dead-letter").hidden = true;
}

async function redrive(id) {
  await api("POST", `/api/v1/admin/dead-letters/${encodeURIComponent(id)}/redrive`);
  if (state.deadLetter === id) closeDeadLetter();
  notice(`Dead letter ${id} redriven: its message is delivered again.`);
  await refresh();
}

// -- actions ---------------------------------------------------------------------------------

function notice(message, isError = false) {
  const line = $("#notice");
  line.textContent = message;
  line.className = isError ? "error" : "ok";
  line.hidden = false;
}

async function act(work) {
  try {
    await work();
  } catch (error) {
    if (denied(error)) signOut(deniedMessage(error));
    else notice(error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#refresh-now").addEventListener("click", () => refresh());
  $("#saga-filter").addEventListener("change", () => act(() => guarded("#sagas", loadSagas)));
  $("#timeline-close").addEventListener("click", () => {
    state.timeline = null;
    $("#timeline").hidden = true;
  });
  $("#dead-letter-close").addEventListener("click", closeDeadLetter);
  if (sessionStorage.getItem(TOKEN_KEY)) start();
});
