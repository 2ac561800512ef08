// The create form: the API's own validation, its error shown next to the field it names, and the
// image build's progress (the create's event stream) as a progress bar.
import { el, events, say } from "/static/console.js";

const form = document.getElementById("create");
const FIELDS = ["runtime_container_image", "base_container_image", "volumes", "user_id", "network",
  "additional_networks", "cpus", "memory", "pids_limit", "runtime", "labels"];

function value(name) { return form.elements[name].value.trim(); }

function lines(text) { return text.split("\n").map((s) => s.trim()).filter(Boolean); }

function payload() {
  const config = {};
  for (const name of ["runtime_container_image", "base_container_image", "network", "runtime", "memory"]) {
    if (value(name)) config[name] = value(name);
  }
  for (const name of ["user_id", "pids_limit", "cpus"]) {
    // Sent as typed; the API says what is wrong with "abc" (and names the field).
    if (value(name)) config[name] = isNaN(Number(value(name))) ? value(name) : Number(value(name));
  }
  if (value("volumes")) config.volumes = lines(value("volumes"));
  if (value("additional_networks")) config.additional_networks = value("additional_networks").split(",").map((s) => s.trim()).filter(Boolean);
  const labels = {};
  for (const line of lines(value("labels"))) {
    const cut = line.indexOf("=");
    labels[cut < 0 ? line : line.slice(0, cut)] = cut < 0 ? "" : line.slice(cut + 1);
  }
  return { config, labels };
}

function clearErrors() {
  for (const name of [...FIELDS, "form"]) {
    const p = document.getElementById(`e-${name}`);
    if (p) p.textContent = "";
    const input = form.elements[name];
    if (input) input.removeAttribute("aria-invalid");
  }
}

/** Put the API's message next to the field it names (config.cpus, volumes[0], rule names...). */
function showError(err) {
  const message = err.message || "the service refused";
  const text = `${message}${err.rule ? ` (rule: ${err.rule})` : ""}`;
  const haystack = `${message} ${err.rule || ""}`;
  let field = FIELDS.find((f) => new RegExp(`(config\\.)?\\b${f}\\b`).test(haystack));
  if (!field && /volume|mount|root/i.test(haystack)) field = "volumes";
  if (!field && /network/i.test(haystack)) field = "network";
  if (!field && /cpu/i.test(haystack)) field = "cpus";
  if (!field && /memory/i.test(haystack)) field = "memory";
  if (!field && /label/i.test(haystack)) field = "labels";
  const target = document.getElementById(`e-${field || "form"}`);
  target.textContent = text;
  if (field) {
    form.elements[field].setAttribute("aria-invalid", "true");
    form.elements[field].focus();
  }
  say(`Not created: ${text}`, true);
}

form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  clearErrors();
  const button = document.getElementById("create-button");
  button.disabled = true;
  const box = document.getElementById("progress-box");
  const bar = document.getElementById("progress");
  const log = document.getElementById("progress-log");
  log.textContent = "";
  bar.removeAttribute("value");
  box.hidden = false;
  say("Creating…");
  events("POST", "/v1/sandboxes", {
    body: payload(),
    reconnect: false,
    onEvent: (name, data) => {
      const parsed = data ? JSON.parse(data) : {};
      if (name === "progress") {
        log.textContent += parsed.line + "\n";
        log.scrollTop = log.scrollHeight;
        const step = /Step (\d+)\/(\d+)/.exec(parsed.line);
        if (step) { bar.max = Number(step[2]); bar.value = Number(step[1]); }
      } else if (name === "sandbox") {
        bar.max = 1; bar.value = 1;
        say(`Created ${parsed.id}`);
        location.href = `/sandboxes/${parsed.id}`;
      } else if (name === "error") {
        box.hidden = true;
        button.disabled = false;
        showError(parsed.error || { message: "the service refused the request" });
      }
    },
    onClose: () => { button.disabled = false; },
  });
});

// Keep the form's error hints tidy as the user fixes a field.
form.addEventListener("input", (ev) => {
  const p = document.getElementById(`e-${ev.target.name}`);
  if (p) p.textContent = "";
  ev.target.removeAttribute("aria-invalid");
});
void el;
