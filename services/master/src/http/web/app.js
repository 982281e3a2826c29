// buildmaster's pages, made live. Plain JavaScript, no build step: the pages
// are rendered by the masters; this script subscribes to live events (/ws),
// follows running logs, and sends control actions as JSON-RPC with the
// session's CSRF token.
"use strict";

const RESULTS = ["success", "warnings", "failure", "skipped", "exception", "retry", "cancelled"];
/// Lines of a log shown at first, and loaded per "earlier" click.
const LOG_PAGE = 1000;

const data = (name) => document.querySelector(`[data-name="${name}"]`)?.dataset.value ?? "";
let me = { user: null };

// --- who is logged in, and control actions -----------------------------------------

async function whoAmI() {
  try {
    me = await (await fetch("/auth/me", { credentials: "same-origin" })).json();
  } catch (_) {
    me = { user: null };
  }
  const who = document.getElementById("who");
  if (!who) return;
  who.textContent = "";
  if (me.user) {
    const name = document.createElement("span");
    name.className = "user";
    name.textContent = me.user;
    const via = { local: "password", github: "GitHub" }[me.provider] ?? me.provider?.replace(/^oidc:/, "");
    const roles = me.roles?.length ? me.roles.join(", ") : "no roles";
    name.title = `signed in with ${via}; roles: ${roles}`;
    const roleList = document.createElement("span");
    roleList.className = "roles";
    roleList.textContent = ` (${roles})`;
    who.append(name, roleList, " · ");
    const out = document.createElement("a");
    out.href = "#";
    out.textContent = "log out";
    out.addEventListener("click", async (event) => {
      event.preventDefault();
      await fetch("/auth/logout", { method: "POST", credentials: "same-origin" });
      location.reload();
    });
    who.append(out);
  } else if (me.login_required) {
    const login = document.createElement("a");
    login.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    login.textContent = "log in";
    who.append(login);
  }
}

/// A JSON-RPC call on `/api/v2{path}`; resolves to its result, rejects with
/// the error's message.
async function rpc(path, method, params = {}) {
  const headers = { "Content-Type": "application/json" };
  if (me.csrf_token) headers["X-CSRF-Token"] = me.csrf_token;
  const response = await fetch(`/api/v2${path}`, {
    method: "POST",
    credentials: "same-origin",
    headers,
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  const body = await response.json().catch(() => ({}));
  if (body.error) {
    const message = body.error.message || `HTTP ${response.status}`;
    if (response.status === 401) throw new Error(`${message} — log in first`);
    throw new Error(message);
  }
  return body.result;
}

function showError(near, error) {
  const slot = near.closest("form, p, li, td")?.querySelector(".error") || near.parentElement?.querySelector(".error");
  if (slot) slot.textContent = error.message;
  else alert(error.message);
}

function wireActions(root = document) {
  for (const button of root.querySelectorAll("button.action")) {
    if (button.dataset.wired) continue;
    button.dataset.wired = "1";
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const result = await rpc(button.dataset.path, button.dataset.method, {});
        if (button.dataset.method === "rebuild" && Array.isArray(result)) {
          await goToBuildOf(Object.values(result[1])[0], data("builder"));
          return;
        }
        if (["workers", "builder"].includes(document.body.dataset.page) && /pause/.test(button.dataset.method)) {
          location.reload();
        }
        if (button.dataset.method === "cancel") button.closest("li")?.remove();
      } catch (error) {
        showError(button, error);
      } finally {
        button.disabled = false;
      }
    });
  }
}

/// Waits for the build of request `requestId` and opens its page.
async function goToBuildOf(requestId, builder) {
  for (let attempt = 0; attempt < 600; attempt++) {
    const body = await (await fetch(`/api/v2/builds?buildrequestid=${requestId}`)).json();
    const build = body.builds?.[0];
    if (build) {
      location.href = `/builders/${encodeURIComponent(builder)}/builds/${build.number}`;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function wireForce() {
  const form = document.getElementById("force");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const params = { builderNames: [form.dataset.builder], reason: fields.get("reason") || "forced from the web" };
    for (const name of ["branch", "revision"]) {
      if (fields.get(name)) params[name] = fields.get(name);
    }
    const properties = {};
    for (const line of String(fields.get("properties") || "").split("\n")) {
      const at = line.indexOf("=");
      if (at > 0) properties[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    for (const [name, value] of fields) {
      if (name.startsWith("parameter:")) properties[name.slice("parameter:".length)] = value;
    }
    if (Object.keys(properties).length) params.properties = properties;
    const button = form.querySelector("button");
    button.disabled = true;
    form.querySelector(".error").textContent = "";
    try {
      const result = await rpc(`/forceschedulers/${encodeURIComponent(form.dataset.scheduler)}`, "force", params);
      await goToBuildOf(Object.values(result[1])[0], form.dataset.builder);
    } catch (error) {
      showError(button, error);
    } finally {
      button.disabled = false;
    }
  });
}

function wireLogin() {
  const form = document.getElementById("login");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = new FormData(form);
    const response = await fetch("/auth/login", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: fields.get("username"), password: fields.get("password") }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      form.querySelector(".error").textContent = body.error || `HTTP ${response.status}`;
      return;
    }
    // Only a page of this site: `//host` and `/\host` lead elsewhere.
    const next = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
    location.href = next.origin === location.origin ? next.pathname + next.search + next.hash : "/";
  });
}

// --- live events ------------------------------------------------------------------

/// Subscribes to `paths` on /ws and calls `handle(key, message)` for each
/// event; reconnects with backoff.
/// `resync` runs when a lost connection is back, as events may have been
/// missed meanwhile.
function live(paths, handle, resync = () => {}) {
  let delay = 500;
  let connected = false;
  let handled = Promise.resolve();
  const connect = () => {
    const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    socket.addEventListener("open", () => {
      delay = 500;
      paths.forEach((path, i) => socket.send(JSON.stringify({ cmd: "startConsuming", path, _id: i + 1 })));
      if (connected) resync();
      connected = true;
    });
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      // One event at a time, in order: a handler that fetches must not let
      // an older answer land after a newer one.
      if (frame.k) handled = handled.then(() => handle(frame.k, frame.m)).catch(() => {});
    });
    socket.addEventListener("close", () => {
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    });
  };
  connect();
}

/// The markup of one item as the master renders it on its pages (see the
/// fragment routes in web.rs), or null when it is gone.
async function fragment(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) return null;
  const template = document.createElement("template");
  template.innerHTML = (await response.text()).trim();
  const element = template.content.firstElementChild;
  if (element) localizeTimes(element);
  return element;
}

function overviewLive() {
  const cells = Number(data("cells")) || 12;
  const branchFiltered = data("branch") !== "";
  live(["builds/*/*", "buildrequests/*/*"], async (key, m) => {
    const row = document.querySelector(`tr[data-builderid="${m.builderid}"]`);
    if (!row) return;
    if (key.startsWith("buildrequests/")) {
      const pending = row.querySelector("td.pending");
      const total = document.getElementById("pending-total");
      const change = key.endsWith("/new") ? 1 : key.endsWith("/claimed") || key.endsWith("/cancelled") ? -1 : 0;
      if (change) {
        pending.textContent = Math.max(0, Number(pending.textContent) + change);
        total.textContent = Math.max(0, Number(total.textContent) + change);
      }
      return;
    }
    const shown = row.querySelector(`a[data-buildid="${m.buildid}"]`);
    if (!shown && branchFiltered) return; // the event does not say which branch
    const cell = await fragment(`/fragments/cells/${m.buildid}`);
    if (!cell) return;
    if (shown) {
      shown.replaceWith(cell);
      return;
    }
    const container = row.querySelector("td.cells");
    container.prepend(cell);
    while (container.children.length > cells) container.lastElementChild.remove();
  });
}

function builderLive() {
  const builderId = data("builderid");
  live([`builders/${builderId}/builds/*/*`, `builders/${builderId}/buildrequests/*/*`], async (key, m) => {
    if (key.includes("/buildrequests/")) {
      const listed = document.querySelector(`#pending li[data-requestid="${m.buildrequestid}"]`);
      if (/\/(claimed|cancelled|complete)$/.test(key)) {
        listed?.remove();
      } else if (key.endsWith("/update") || (key.endsWith("/new") && !listed)) {
        const item = await fragment(`/fragments/pending/${m.buildrequestid}`);
        if (item && listed) listed.replaceWith(item);
        else if (item) document.getElementById("pending").append(item);
        if (item) wireActions(item);
      }
      document.getElementById("pending-count").textContent = document.querySelectorAll("#pending li").length;
      return;
    }
    const row = await fragment(`/fragments/build-rows/${m.buildid}`);
    if (!row) return;
    const shown = document.querySelector(`#builds tr[data-buildid="${m.buildid}"]`);
    if (shown) shown.replaceWith(row);
    else document.querySelector("#builds tbody").prepend(row);
  });
}

function formatDuration(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

// --- logs ------------------------------------------------------------------------------

const ANSI_COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

/// Appends `text` to `into` as spans, turning ANSI SGR colour codes into
/// classes; nothing in the text is ever parsed as HTML.
function appendAnsi(into, text, state) {
  const parts = text.split(/\x1b\[([0-9;]*)m/);
  for (let i = 0; i < parts.length; i++) {
    if (i % 2 === 1) {
      for (const code of (parts[i] || "0").split(";").map(Number)) {
        if (code === 0) { state.fg = null; state.bold = false; }
        else if (code === 1) state.bold = true;
        else if (code === 22) state.bold = false;
        else if (code >= 30 && code <= 37) state.fg = ANSI_COLOURS[code - 30];
        else if (code >= 90 && code <= 97) state.fg = `bright-${ANSI_COLOURS[code - 90]}`;
        else if (code === 39) state.fg = null;
      }
      continue;
    }
    if (!parts[i]) continue;
    if (!state.fg && !state.bold) { into.append(parts[i]); continue; }
    const span = document.createElement("span");
    if (state.fg) span.classList.add(`ansi-${state.fg}`);
    if (state.bold) span.classList.add("ansi-bold");
    span.textContent = parts[i];
    into.append(span);
  }
}

/// One line element: a linkable number and the text, classed by channel.
function lineElement(logId, number, channel, text) {
  const line = document.createElement("span");
  line.className = `line ch-${channel}`;
  line.id = `log${logId}-L${number + 1}`;
  const anchor = document.createElement("a");
  anchor.className = "ln";
  anchor.href = `#${line.id}`;
  anchor.textContent = number + 1;
  line.append(anchor);
  const body = document.createElement("span");
  body.className = "text";
  appendAnsi(body, text, {});
  line.append(body);
  line.append("\n");
  return line;
}

/// Parses `contents`' prefixed lines ("o..." stdout, "e..." stderr, "h..." header).
function* prefixedLines(content) {
  const lines = content.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  for (const line of lines) {
    const channel = "oeh".includes(line[0]) ? line[0] : "o";
    yield [channel, "oeh".includes(line[0]) ? line.slice(1) : line];
  }
}

class LogView {
  constructor(element) {
    this.element = element;
    this.id = element.dataset.logid;
    this.pre = element.querySelector("pre.lines");
    this.earlier = element.querySelector("button.earlier");
    this.later = element.querySelector("button.later");
    this.follow = element.querySelector("input.follow");
    this.first = 0; // number of the first line shown
    this.next = 0; // number the next line gets
    this.earlier.addEventListener("click", () => this.loadEarlier());
    this.later.addEventListener("click", () => this.loadLater());
  }

  async start() {
    if (this.element.dataset.complete === "true") {
      const lines = Number(this.element.dataset.lines) || 0;
      this.first = this.next = Math.max(0, lines - LOG_PAGE);
      if (this.targetLine() === null) {
        await this.load(this.first, LOG_PAGE, false);
        this.earlier.hidden = this.first === 0;
        this.later.hidden = true;
      } else {
        await this.reveal();
      }
      window.addEventListener("hashchange", () => this.reveal());
    } else {
      await this.stream();
    }
  }

  async load(offset, limit, before) {
    const body = await (await fetch(`/api/v2/logs/${this.id}/contents?offset=${offset}&limit=${limit}`)).json();
    const fragment = document.createDocumentFragment();
    let number = offset;
    for (const chunk of body.logchunks || []) {
      for (const [channel, text] of prefixedLines(chunk.content)) {
        fragment.append(lineElement(this.id, number++, channel, text));
      }
    }
    if (before) this.pre.prepend(fragment);
    else { this.pre.append(fragment); this.next = number; }
  }

  async loadLater() {
    await this.load(this.next, LOG_PAGE, false);
    this.later.hidden = this.next >= (Number(this.element.dataset.lines) || 0);
  }

  /// Shows the line the address names, when it is a line of this log (a
  /// failed test's first mention): loads the lines around it unless they
  /// are shown already, and scrolls to it.
  async reveal() {
    const target = this.targetLine();
    if (target === null) return;
    this.element.closest("details")?.setAttribute("open", "");
    if (target < this.first || target >= this.next) {
      const lines = Number(this.element.dataset.lines) || 0;
      this.pre.replaceChildren();
      this.first = this.next = Math.max(0, Math.min(target - 20, lines - LOG_PAGE));
      await this.load(this.first, LOG_PAGE, false);
      this.earlier.hidden = this.first === 0;
      this.later.hidden = this.next >= lines;
    }
    this.jumpToHash();
  }

  /// The 0-based line of this log the address names (`#log{id}-L{n}`), if any.
  targetLine() {
    const match = location.hash.match(/^#log(\d+)-L(\d+)$/);
    return match && match[1] === this.id ? Number(match[2]) - 1 : null;
  }

  async loadEarlier() {
    const offset = Math.max(0, this.first - LOG_PAGE);
    await this.load(offset, this.first - offset, true);
    this.first = offset;
    this.earlier.hidden = this.first === 0;
  }

  /// Follows a running log: the last lines first, then each line as it is
  /// printed, until the log ends. A stream cut early (a master restarting)
  /// is taken up again where it stopped, through any master.
  async stream() {
    let query = `tail=${LOG_PAGE}`;
    let delay = 500;
    for (;;) {
      try {
        const response = await fetch(`/api/v2/logs/${this.id}/contents?follow=true&${query}`);
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        if (query.startsWith("tail")) {
          this.first = this.next = Number(response.headers.get("X-First-Line")) || 0;
          this.earlier.hidden = this.first === 0;
        }
        await this.read(response.body.getReader());
        const log = (await (await fetch(`/api/v2/logs/${this.id}`)).json()).logs?.[0];
        if (!log || log.complete) break;
      } catch (_) {
        // Cut or refused: ask again below.
      }
      query = `offset=${this.next}`;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
    this.element.dataset.complete = "true";
    // Nothing more to follow once the log has ended.
    this.follow?.closest("label")?.remove();
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      pending += decoder.decode(value, { stream: true });
      const end = pending.lastIndexOf("\n");
      if (end < 0) continue;
      const fragment = document.createDocumentFragment();
      for (const [channel, text] of prefixedLines(pending.slice(0, end + 1))) {
        fragment.append(lineElement(this.id, this.next++, channel, text));
      }
      pending = pending.slice(end + 1);
      this.pre.append(fragment);
      if (this.follow?.checked) this.pre.lastElementChild?.scrollIntoView({ block: "nearest" });
    }
  }

  jumpToHash() {
    const target = location.hash && document.getElementById(location.hash.slice(1));
    if (target && this.pre.contains(target)) {
      for (const shown of this.pre.querySelectorAll(".target")) shown.classList.remove("target");
      target.classList.add("target");
      target.scrollIntoView({ block: "center" });
    }
  }
}

function startLogs(root = document) {
  for (const element of root.querySelectorAll("div.log")) {
    if (element.dataset.started) continue;
    element.dataset.started = "1";
    new LogView(element).start();
  }
}

function buildLive() {
  const buildId = data("buildid");
  const resync = async () => {
    const build = (await (await fetch(`/api/v2/builds/${buildId}`)).json()).builds?.[0];
    if (build) showBuild(build);
    for (const step of (await (await fetch(`/api/v2/builds/${buildId}/steps`)).json()).steps || []) await showStep(step);
  };
  live([`builds/${buildId}/*`, `builds/${buildId}/steps/*/*`], async (key, m) => {
    if (key.startsWith("builds/") && !key.includes("/steps/")) {
      showBuild(m);
      return;
    }
    await showStep(m);
  }, resync);
}

const resultClass = (build) => (build.results === null || build.results === undefined ? "running" : `r${build.results}`);
const resultName = (build) => (build.results === null || build.results === undefined ? "running" : RESULTS[build.results] || "unknown");

/// Shows the build's result, state and times from its API shape.
function showBuild(m) {
  const badge = document.getElementById("result");
  badge.className = `badge ${resultClass(m)}`;
  badge.textContent = resultName(m);
  document.getElementById("state").textContent = m.state_string || "";
  if (!m.complete) return;
  document.getElementById("stop").hidden = true;
  document.getElementById("rebuild").hidden = false;
  if (m.complete_at) {
    document.getElementById("finished").textContent = new Date(m.complete_at * 1000).toLocaleString();
    if (m.started_at) document.getElementById("duration").textContent = formatDuration(m.complete_at - m.started_at);
  }
}

/// Adds or updates a step of the build page. A step already shown keeps
/// its log views (they may be following a running log): only its summary
/// and state change, and logs it did not have are added.
async function showStep(step) {
  const fresh = await fragment(`/fragments/steps/${step.stepid}`);
  if (!fresh) return;
  const shown = document.querySelector(`li.step[data-stepid="${step.stepid}"]`);
  if (!shown) {
    document.getElementById("steps").append(fresh);
    startLogs(fresh);
    return;
  }
  shown.className = fresh.className;
  shown.querySelector("summary").replaceWith(fresh.querySelector("summary"));
  const details = shown.querySelector("details");
  for (const log of fresh.querySelectorAll("div.log")) {
    if (!details.querySelector(`div.log[data-logid="${log.dataset.logid}"]`)) details.append(log);
  }
  startLogs(shown);
}

/// Running durations tick; times show in the reader's zone.
function tick() {
  const now = Date.now() / 1000;
  for (const span of document.querySelectorAll("span.elapsed[data-since]")) {
    span.textContent = formatDuration(Math.max(0, Math.round(now - Number(span.dataset.since))));
  }
}

/// Times are rendered in UTC; they show in the reader's zone.
function localizeTimes(root = document) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    if (time.title) continue;
    time.title = time.textContent;
    time.textContent = new Date(Number(time.getAttribute("datetime")) * 1000).toLocaleString();
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  localizeTimes();
  setInterval(tick, 1000);
  await whoAmI();
  wireActions();
  wireForce();
  wireLogin();
  switch (document.body.dataset.page) {
    case "overview": overviewLive(); break;
    case "builder": builderLive(); break;
    case "build": startLogs(); buildLive(); break;
  }
});
