// One sandbox: terminal (xterm.js over the PTY WebSocket, through the service's runtime proxy), files,
// background commands, logs, ports and a small CPU/memory chart. Everything goes through /v1.
import { api, bytes, el, events, percent, request, runtime, say } from "/static/console.js";

const id = document.getElementById("sandbox").dataset.id;
const rt = (path) => runtime(id, path);
let record = null;

// ------------------------------------------------------------------ state and actions

function showState(state) {
  const badge = document.getElementById("state");
  badge.textContent = state;
  badge.className = `badge ${state}`;
  for (const b of document.querySelectorAll("[data-action]")) {
    const a = b.dataset.action;
    b.disabled = (a === "pause" || a === "stop") ? state !== "running" : a === "resume" ? !["paused", "stopped"].includes(state) : false;
  }
}

async function load() {
  record = await api.get(`/v1/sandboxes/${id}`);
  showState(record.state);
  renderPorts();
  return record;
}

for (const b of document.querySelectorAll("[data-action]")) {
  b.addEventListener("click", async () => {
    const action = b.dataset.action;
    if (action === "remove" && !confirm(`Remove sandbox ${id}? Its files go with it.`)) return;
    try {
      if (action === "remove") { await api.del(`/v1/sandboxes/${id}`); location.href = "/"; return; }
      const r = await api.post(`/v1/sandboxes/${id}/${action}`);
      showState(r.state);
      say(`${action}: done`);
      if (action === "resume") connectTerminal();
    } catch (e) { say(`${action}: ${e.message}`, true); }
  });
}

events("GET", "/v1/events", {
  onEvent: (name, data) => {
    if (name !== "message") return;
    const ev = JSON.parse(data);
    if (ev.id !== id) return;
    if (record) record.state = ev.state;
    if (ev.state === "removed") { say("This sandbox was removed."); showState("removed"); return; }
    showState(ev.state);
  },
});

// ------------------------------------------------------------------ terminal

const term = new window.Terminal({ cursorBlink: true, convertEol: false, fontSize: 14,
  theme: matchMedia("(prefers-color-scheme: dark)").matches ? {} : { background: "#fdfdfd", foreground: "#1d1d1d", cursor: "#1d1d1d" } });
const fit = new window.FitAddon.FitAddon();
term.loadAddon(fit);
term.open(document.getElementById("terminal"));
fit.fit();
let socket = null;
const termStatus = document.getElementById("term-status");
const encoder = new TextEncoder();

function connectTerminal() {
  if (socket && socket.readyState <= 1) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}${rt("pty")}?cols=${term.cols}&rows=${term.rows}`;
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  termStatus.textContent = "connecting…";
  socket.onopen = () => { termStatus.textContent = "connected"; document.body.dataset.terminal = "open"; term.focus(); };
  socket.onmessage = (m) => {
    // The shell's first output is its prompt: the moment the terminal is usable (read by bench_console.py).
    if (!performance.getEntriesByName("terminal-prompt").length) performance.mark("terminal-prompt");
    term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
  };
  socket.onclose = (e) => {
    document.body.dataset.terminal = "closed";
    termStatus.textContent = `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`;
  };
}
term.onData((data) => { if (socket && socket.readyState === 1) socket.send(encoder.encode(data)); });
term.onResize(({ cols, rows }) => {
  if (socket && socket.readyState === 1) socket.send(JSON.stringify({ type: "resize", cols, rows }));
});
new ResizeObserver(() => fit.fit()).observe(document.getElementById("terminal"));

// ------------------------------------------------------------------ files

const pathInput = document.getElementById("path");
const list = document.getElementById("files");
let editing = null;

async function listDir(path) {
  try {
    const listing = await api.post(rt("files/list"), { path, include_hidden: true });
    pathInput.value = listing.path;
    list.replaceChildren();
    for (const entry of listing.entries) {
      const label = entry.type === "dir" ? `${entry.name}/` : entry.name;
      const button = el("button", { type: "button", class: "linklike", "data-path": entry.path, "data-type": entry.type },
        label);
      button.addEventListener("click", () => entry.type === "dir" ? listDir(entry.path) : openFile(entry.path));
      list.append(el("li", {}, button, entry.type === "file" ? el("span", { class: "muted small" }, ` ${bytes(entry.size)}`) : ""));
    }
    if (!listing.entries.length) list.append(el("li", { class: "muted" }, "(empty)"));
  } catch (e) { say(`files: ${e.message}`, true); }
}

async function openFile(path) {
  try {
    const file = await api.post(rt("files/read"), { path });
    editing = path;
    document.getElementById("editor-box").hidden = false;
    document.getElementById("editor-label").textContent = `Edit ${path}`;
    const area = document.getElementById("editor");
    area.value = file.content;
    area.focus();
  } catch (e) {
    say(`${path}: ${e.message} (download it instead)`, true);
    editing = path;
  }
}

document.getElementById("save").addEventListener("click", async () => {
  try {
    await api.post(rt("files/write"), { path: editing, content: document.getElementById("editor").value });
    say(`Saved ${editing}`);
    listDir(pathInput.value);
  } catch (e) { say(`save: ${e.message}`, true); }
});
// The textarea's own undo history (Ctrl+Z works too): the button is the same command for pointer users.
document.getElementById("undo").addEventListener("click", () => {
  const area = document.getElementById("editor");
  area.focus();
  document.execCommand("undo");
});
document.getElementById("close-editor").addEventListener("click", () => {
  document.getElementById("editor-box").hidden = true;
  editing = null;
});
document.getElementById("download").addEventListener("click", async () => {
  if (!editing) return;
  try {
    const response = await request("GET", rt(`files/raw?path=${encodeURIComponent(editing)}`), { raw: true });
    const url = URL.createObjectURL(await response.blob());
    const a = el("a", { href: url, download: editing.split("/").pop() });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { say(`download: ${e.message}`, true); }
});

async function upload(files) {
  for (const file of files) {
    const dest = `${pathInput.value.replace(/\/$/, "")}/${file.name}`;
    try {
      await request("PUT", rt(`files/raw?path=${encodeURIComponent(dest)}`), { body: file,
        headers: { "content-type": "application/octet-stream" } });
      say(`Uploaded ${dest}`);
    } catch (e) { say(`upload ${file.name}: ${e.message}`, true); }
  }
  listDir(pathInput.value);
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); });
document.getElementById("upload").addEventListener("change", (e) => upload(e.target.files));
document.getElementById("go").addEventListener("click", () => listDir(pathInput.value));
pathInput.addEventListener("keydown", (e) => { if (e.key === "Enter") listDir(pathInput.value); });
document.getElementById("up").addEventListener("click", () => listDir(pathInput.value.replace(/\/[^/]+\/?$/, "") || "/"));

// ------------------------------------------------------------------ background commands

async function listBackground() {
  try {
    const result = await api.get(rt("background"));
    const ul = document.getElementById("bg");
    ul.replaceChildren();
    for (const b of result.commands || result.background || []) {
      const show = el("button", { type: "button", class: "linklike" }, b.command);
      show.addEventListener("click", () => showOutput(b.id));
      const kill = el("button", { type: "button", "aria-label": `Stop ${b.command}` }, "Stop");
      kill.addEventListener("click", async () => { await api.del(rt(`background/${b.id}`)); listBackground(); });
      ul.append(el("li", {}, show, ` ${b.running ? "running" : `exit ${b.exit_code}`} `, b.running ? kill : ""));
    }
  } catch (e) { say(`background: ${e.message}`, true); }
}

async function showOutput(bgId) {
  const out = await api.get(rt(`background/${bgId}/output`));
  const pre = document.getElementById("bg-output");
  pre.hidden = false;
  pre.textContent = out.output || "(no output yet)";
}

document.getElementById("bg-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const command = document.getElementById("bg-command").value.trim();
  if (!command) return;
  try { await api.post(rt("background"), { command }); document.getElementById("bg-command").value = ""; listBackground(); }
  catch (err) { say(`start: ${err.message}`, true); }
});

// ------------------------------------------------------------------ logs

async function loadLogs() {
  try {
    const text = await api.get(`/v1/sandboxes/${id}/logs?tail=500`);
    const pre = document.getElementById("logs");
    pre.textContent = text || "(empty)";
    pre.scrollTop = pre.scrollHeight;
  } catch (e) { say(`logs: ${e.message}`, true); }
}
let follow = null;
document.getElementById("refresh-logs").addEventListener("click", loadLogs);
document.getElementById("follow").addEventListener("change", (e) => {
  clearInterval(follow);
  follow = e.target.checked ? setInterval(loadLogs, 2000) : null;
});

// ------------------------------------------------------------------ ports

function portLink(port) {
  return el("li", {}, el("a", { href: `/v1/sandboxes/${id}/ports/${port}/`, target: "_blank", rel: "noopener" }, `port ${port}`));
}
function renderPorts() {
  const ul = document.getElementById("ports");
  ul.replaceChildren(...(record.config.host_ports || []).map(portLink));
  if (!ul.children.length) ul.append(el("li", { class: "muted small" }, "none published; any listening port opens below"));
}
document.getElementById("port-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const port = Number(document.getElementById("port").value);
  if (port >= 1 && port <= 65535) window.open(`/v1/sandboxes/${id}/ports/${port}/`, "_blank", "noopener");
  else say("A port is a number from 1 to 65535", true);
});

// ------------------------------------------------------------------ chart

const samples = [];
const canvas = document.getElementById("chart");
function draw() {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const styles = getComputedStyle(document.body);
  const plot = (key, max, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    samples.forEach((s, i) => {
      const x = w - (samples.length - 1 - i) * (w / 60);
      const y = h - Math.min(1, (s[key] || 0) / max) * (h - 4) - 2;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  };
  const memMax = Math.max(...samples.map((s) => s.memory_limit_bytes || s.memory_bytes || 1), 1);
  plot("cpu_percent", Math.max(100, ...samples.map((s) => s.cpu_percent || 0)), styles.getPropertyValue("--cpu"));
  plot("memory_bytes", memMax, styles.getPropertyValue("--mem"));
}
async function sample() {
  if (!record || record.state !== "running") return;
  try {
    const s = await api.get(`/v1/sandboxes/${id}/stats`);
    samples.push(s);
    if (samples.length > 60) samples.shift();
    document.getElementById("cpu-now").textContent = percent(s.cpu_percent);
    document.getElementById("mem-now").textContent = `${bytes(s.memory_bytes)}${s.memory_limit_bytes ? " of " + bytes(s.memory_limit_bytes) : ""}`;
    draw();
  } catch (_) { /* paused or gone: the state badge says so */ }
}

// ------------------------------------------------------------------ start

load().then((r) => {
  if (r.state === "running") { connectTerminal(); listDir("."); listBackground(); }
  loadLogs();
  sample();
  setInterval(sample, 3000);
}).catch((e) => say(`${id}: ${e.message}`, true));
