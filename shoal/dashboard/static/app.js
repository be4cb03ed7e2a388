// The dashboard page: renders the snapshots /api/stream sends (server-sent events), the
// cluster events, a followed service's logs, and sends the confirmed actions.
"use strict";

const $ = (sel) => document.querySelector(sel);
const MAX_EVENTS = 100;
const MAX_LOG_LINES = 500;
let snapshot = null;
let logSource = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function bytes(n) {
  if (!n) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(t) { return new Date(t * 1000).toLocaleTimeString(); }

// ---- actions: every one is confirmed first, and sent with the header the server requires.
function confirmAction(text, replicas) {
  return new Promise((resolve) => {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    const label = $("#confirm-replicas-label");
    label.hidden = replicas === undefined;
    if (replicas !== undefined) $("#confirm-replicas").value = replicas;
    const done = (ok) => {
      $("#confirm-ok").onclick = $("#confirm-cancel").onclick = null;
      dialog.close();
      resolve(ok ? { replicas: Number($("#confirm-replicas").value) } : null);
    };
    $("#confirm-ok").onclick = () => done(true);
    $("#confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => resolve(null);
    dialog.showModal();
    if (replicas !== undefined) $("#confirm-replicas").focus();
  });
}

async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Shoal-Dashboard": "1" },
    body: JSON.stringify(body || {}),
  });
  const answer = await resp.json().catch(() => ({}));
  toast(resp.ok ? "done" : `refused: ${answer.message || resp.status}`, !resp.ok);
  return resp.ok;
}

function toast(text, bad) {
  const t = $("#toast");
  t.textContent = text;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function scale(svc) {
  const choice = await confirmAction(`Scale ${svc.name} (now ${svc.replicas_desired}) to:`,
                                     svc.replicas_desired);
  if (!choice || !Number.isInteger(choice.replicas) || choice.replicas < 0) return;
  await post(`/api/services/${encodeURIComponent(svc.id)}/scale`, { replicas: choice.replicas });
}

async function rollback(svc) {
  if (await confirmAction(`Roll ${svc.name} back to its previous spec?`)) {
    await post(`/api/services/${encodeURIComponent(svc.id)}/rollback`);
  }
}

async function availability(node, value) {
  const what = value === "drain" ? "Drain" : "Activate";
  const why = value === "drain" ? " Its tasks move to other nodes." : "";
  if (await confirmAction(`${what} node ${node.hostname}?${why}`)) {
    await post(`/api/nodes/${encodeURIComponent(node.id)}/availability`, { availability: value });
  }
}

// ---- rendering
function renderNodes(nodes) {
  const body = $("#nodes tbody");
  body.replaceChildren(...nodes.map((n) => el("tr", { "data-hostname": n.hostname, "data-id": n.id },
    el("td", {}, n.hostname),
    el("td", {}, n.role),
    el("td", { class: `state ${n.status}` }, n.status),
    el("td", { class: "availability" }, n.availability),
    el("td", {}, n.leader ? "Leader" : (n.reachability || "")),
    el("td", {}, n.cpus ? n.cpus.toFixed(1) : ""),
    el("td", {}, bytes(n.memory_bytes)),
    el("td", { class: "tasks" }, n.tasks_running),
    el("td", {}, n.availability === "active"
      ? el("button", { class: "drain", onclick: () => availability(n, "drain") }, "Drain")
      : el("button", { class: "activate", onclick: () => availability(n, "active") }, "Activate")))));
}

function renderServices(services) {
  const body = $("#services tbody");
  body.replaceChildren(...services.map((s) => {
    const actions = el("td", { class: "actions" });
    if (s.mode === "replicated") {
      actions.append(el("button", { class: "scale", onclick: () => scale(s) }, "Scale"));
    }
    if (s.can_rollback) {
      actions.append(el("button", { class: "rollback", onclick: () => rollback(s) }, "Rollback"));
    }
    actions.append(el("button", { class: "logs", onclick: () => followLogs(s) }, "Logs"));
    const update = s.update.state ? `${s.update.state}${s.update.message ? ": " + s.update.message : ""}` : "";
    return el("tr", { "data-service": s.name, "data-id": s.id },
      el("td", {}, s.name),
      el("td", {}, s.mode),
      el("td", { class: "replicas" }, `${s.replicas_running}/${s.replicas_desired}`),
      el("td", {}, s.image),
      el("td", { class: "digest", title: s.digest }, s.digest ? s.digest.slice(0, 19) + "…" : ""),
      el("td", {}, s.ports.join(", ")),
      el("td", { class: "update" }, update),
      actions);
  }));
}

function renderTasks(nodes, tasks) {
  const byNode = new Map(nodes.map((n) => [n.id, []]));
  for (const t of tasks) {
    if (!byNode.has(t.node_id)) byNode.set(t.node_id, []);
    byNode.get(t.node_id).push(t);
  }
  const names = new Map(nodes.map((n) => [n.id, n.hostname]));
  $("#tasks").replaceChildren(...[...byNode].map(([id, list]) => el("div", { class: "node-tasks" },
    el("h3", {}, names.get(id) || (id ? id.slice(0, 12) : "unassigned")),
    list.length ? el("ul", {}, ...list.map((t) => el("li", { class: `state ${t.state}`, title: t.error || t.message },
      `${t.name} `, el("span", { class: "task-state" }, t.state))))
      : el("p", { class: "empty" }, "no tasks"))));
}

function renderChart(history) {
  const svg = $("#chart");
  const W = 600, H = 200, pad = 4;
  if (!history.length) { svg.replaceChildren(); return; }
  const t0 = history[0].t, t1 = Math.max(history[history.length - 1].t, t0 + 1);
  const line = (key, max) => history.map((p) =>
    `${(pad + (p.t - t0) / (t1 - t0) * (W - 2 * pad)).toFixed(1)},` +
    `${(H - pad - p[key] / max * (H - 2 * pad)).toFixed(1)}`).join(" ");
  const maxRunning = Math.max(1, ...history.map((p) => p.running));
  const maxRate = Math.max(1, ...history.map((p) => p.commit_rate));
  const ns = "http://www.w3.org/2000/svg";
  const poly = (cls, points) => {
    const p = document.createElementNS(ns, "polyline");
    p.setAttribute("class", cls);
    p.setAttribute("points", points);
    return p;
  };
  svg.replaceChildren(poly("running", line("running", maxRunning)),
                      poly("commits", line("commit_rate", maxRate)));
  const last = history[history.length - 1];
  $("#running-now").textContent = last.running;
  $("#commits-now").textContent = last.commit_rate;
}

function render(s) {
  snapshot = s;
  const m = s.manager;
  $("#manager").textContent = m.hostname
    ? `${m.hostname} (${m.is_leader ? "leader" : "follower"}, raft term ${m.term}, commit ${m.commit_index})` : "";
  const banner = $("#error");
  banner.hidden = !s.error;
  banner.textContent = s.error ? `Cannot read the cluster: ${s.error}` : "";
  $("#events-note").textContent = s.events_live ? "" : "(event stream not followed: reconnecting)";
  renderNodes(s.nodes);
  renderServices(s.services);
  renderTasks(s.nodes, s.tasks);
  renderChart(s.history);
}

function eventLine(ev) {
  const who = ev.name || (ev.id || "").slice(0, 12);
  let what = `${ev.type} ${ev.action} ${who}`;
  if (ev.state) what += `: ${ev.state.old ? ev.state.old + " → " : ""}${ev.state.new}`;
  if (ev.node_name && ev.type === "task") what += ` on ${ev.node_name}`;
  return el("li", { class: `event ${ev.type}` }, el("time", {}, when(ev.time)), " ", what);
}

function addEvents(events) {
  const list = $("#events");
  for (const ev of events) list.prepend(eventLine(ev));
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function followLogs(svc) {
  if (logSource) logSource.close();
  const pre = $("#logs");
  pre.textContent = "";
  $("#logs-service").textContent = `${svc.name} (followed)`;
  logSource = new EventSource(`/api/logs/${encodeURIComponent(svc.id)}`);
  logSource.addEventListener("log", (e) => {
    const entry = JSON.parse(e.data);
    const text = entry.error ? `[${entry.node || ""}] error: ${entry.error}`
      : `${entry.task || ""}@${entry.node || ""} | ${entry.l}`;
    pre.append(text.endsWith("\n") ? text : text + "\n");
    while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
    pre.scrollTop = pre.scrollHeight;
  });
  logSource.addEventListener("end", () => { logSource.close(); pre.append("(log stream ended)\n"); });
}

// ---- the live stream; EventSource reconnects by itself, and a new stream starts with a
// fresh snapshot and the recent events.
function connect() {
  const live = $("#live");
  const stream = new EventSource("/api/stream");
  stream.addEventListener("open", () => { live.textContent = "live"; live.className = "badge on"; });
  stream.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "badge off"; });
  stream.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  stream.addEventListener("events", (e) => { $("#events").replaceChildren(); addEvents(JSON.parse(e.data)); });
  stream.addEventListener("event", (e) => addEvents([JSON.parse(e.data)]));
}

connect();
