// The sandboxes list: the API's list once, then the service's event stream (no polling of states).
import { api, age, bytes, el, events, percent, say } from "/static/console.js";

const body = document.querySelector("#sandboxes tbody");
const filter = document.getElementById("state-filter");
const rows = new Map(); // id -> {record, tr}
const STATS_EVERY_MS = 5000;

function ports(record) {
  const list = record.config.host_ports || [];
  const cell = el("td", { class: "ports" });
  for (const p of list) {
    cell.append(el("a", { href: `/v1/sandboxes/${record.id}/ports/${p}/`, target: "_blank", rel: "noopener" }, String(p)), " ");
  }
  return cell;
}

function actionButton(label, action, record) {
  return el("button", {
    type: "button", "data-action": action, "aria-label": `${label} ${record.id}`,
    class: action === "remove" ? "danger" : "",
    onclick: () => act(action, record.id),
  }, label);
}

function render(record) {
  const known = rows.get(record.id);
  const tr = el("tr", { "data-id": record.id, "data-state": record.state });
  const actions = el("td", { class: "actions" });
  if (record.state === "running") actions.append(actionButton("Pause", "pause", record), actionButton("Stop", "stop", record));
  if (record.state === "paused" || record.state === "stopped") actions.append(actionButton("Resume", "resume", record));
  actions.append(actionButton("Remove", "remove", record));
  const image = record.config.runtime_container_image || record.config.base_container_image || "default";
  tr.append(
    el("td", {}, el("a", { href: `/sandboxes/${record.id}` }, record.labels.name || record.id)),
    el("td", { class: "state" }, el("span", { class: `badge ${record.state}` }, record.state)),
    el("td", { class: "image" }, image),
    el("td", { title: record.created }, age(record.created)),
    el("td", {}, record.owner),
    el("td", { class: "cpu" }, known ? known.tr.querySelector(".cpu").textContent : "–"),
    el("td", { class: "mem" }, known ? known.tr.querySelector(".mem").textContent : "–"),
    ports(record),
    actions,
  );
  if (known) known.tr.replaceWith(tr); else body.append(tr);
  rows.set(record.id, { record, tr });
  applyFilter();
}

function drop(id) {
  const known = rows.get(id);
  if (known) { known.tr.remove(); rows.delete(id); }
  applyFilter();
}

function applyFilter() {
  const want = filter.value;
  let shown = 0;
  for (const { record, tr } of rows.values()) {
    tr.hidden = want !== "" && record.state !== want;
    if (!tr.hidden) shown++;
  }
  document.getElementById("empty").hidden = rows.size !== 0;
}

async function act(action, id) {
  if (action === "remove" && !confirm(`Remove sandbox ${id}? Its files go with it.`)) return;
  try {
    if (action === "remove") await api.del(`/v1/sandboxes/${id}`);
    else await api.post(`/v1/sandboxes/${id}/${action}`);
    say(`${action} ${id}: done`);
  } catch (e) {
    say(`${action} ${id}: ${e.message}`, true);
  }
}

async function refresh(id) {
  try { render(await api.get(`/v1/sandboxes/${id}`)); } catch (e) { if (e.status === 404) drop(id); }
}

async function stats() {
  for (const { record, tr } of rows.values()) {
    if (record.state !== "running") { tr.querySelector(".cpu").textContent = "–"; tr.querySelector(".mem").textContent = "–"; continue; }
    try {
      const s = await api.get(`/v1/sandboxes/${record.id}/stats`);
      tr.querySelector(".cpu").textContent = percent(s.cpu_percent);
      tr.querySelector(".mem").textContent = bytes(s.memory_bytes);
    } catch (_) { /* gone meanwhile: the event stream says so */ }
  }
}

filter.addEventListener("change", applyFilter);

async function load() {
  const list = await api.get("/v1/sandboxes");
  for (const record of list.sandboxes) render(record);
  applyFilter();
}

events("GET", "/v1/events", {
  onOpen: () => { document.getElementById("live").textContent = "live"; load(); },
  onClose: () => { document.getElementById("live").textContent = "reconnecting…"; },
  onEvent: (name, data) => {
    if (name !== "message") return;
    const event = JSON.parse(data);
    if (event.state === "removed") drop(event.id); else refresh(event.id);
  },
});
stats();
setInterval(stats, STATS_EVERY_MS);
