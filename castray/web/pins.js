// The "Pinned" panel: library files CastRay keeps on a set of nodes, present and future,
// each with its coverage and every node's copy, live from the pin_* events.

import { api } from "./api.js";
import { $, badge, el } from "./dom.js";

const COPY_ORDER = ["failed", "receiving", "pending", "waiting", "verified"];

/** "15 of 16 nodes verified, 1 receiving", as the CLI says it. */
export function coverageText(c) {
  const words = [`${c.verified} of ${c.nodes} nodes verified`];
  for (const what of ["receiving", "pending", "failed"]) if (c[what]) words.push(`${c[what]} ${what}`);
  if (c.waiting) words.push(`${c.waiting} waiting for their node`);
  return words.join(", ");
}

function targetText(nodes) {
  if (nodes === "all") return "all nodes";
  if (nodes.group) return `group ${nodes.group}`;
  if (nodes.endpoints) return nodes.endpoints.join(", ");
  return `clusters ${nodes.clusters.join(", ")}`;
}

export class PinsPanel {
  /** ``act(button, work)`` runs an action and turns a failure into a notice. */
  constructor(act) {
    this.act = act;
    this.pins = new Map(); // id -> Pin
    $("pin-form").addEventListener("submit", (event) => this.pin(event));
  }

  async load() {
    const listed = await api("GET", "/api/pins");
    this.pins = new Map(listed.pins.map((p) => [p.id, p]));
    this.render();
  }

  saved(pin) {
    this.pins.set(pin.id, pin);
    this.render();
  }

  removed(id) {
    this.pins.delete(id);
    this.render();
  }

  /** The form's choices: library files, and "all nodes" or a group. */
  choices(files, groups) {
    const file = $("pin-file");
    const keep = file.value;
    file.replaceChildren(...files.map((f) => el("option", { value: f.name }, f.name)));
    if (files.some((f) => f.name === keep)) file.value = keep;
    const nodes = $("pin-nodes");
    const kept = nodes.value;
    nodes.replaceChildren(el("option", { value: "" }, "all nodes, present and future"),
      ...[...groups].sort().map((g) => el("option", { value: g }, `group ${g}`)));
    nodes.value = [...nodes.options].some((o) => o.value === kept) ? kept : "";
  }

  async pin(event) {
    event.preventDefault();
    const group = $("pin-nodes").value;
    const body = { file: $("pin-file").value, nodes: group ? { group } : "all" };
    await this.act($("pin-start"), async () => this.saved(await api("POST", "/api/pins", body)));
  }

  render() {
    const cards = [...this.pins.values()].sort((a, b) => a.created_at.localeCompare(b.created_at))
      .map((pin) => this.card(pin));
    if (!cards.length) cards.push(el("p", { class: "muted empty" }, "Nothing pinned yet."));
    $("pins").replaceChildren(...cards);
  }

  card(pin) {
    const open = document.querySelector(`.pin[data-pin='${pin.id}'] details`)?.open;
    const rows = Object.entries(pin.copies)
      .sort(([a, x], [b, y]) => COPY_ORDER.indexOf(x.status) - COPY_ORDER.indexOf(y.status) || a.localeCompare(b))
      .map(([node, copy]) => el("tr", { dataset: { node } },
        el("td", {}, node), el("td", {}, badge(copy.status)),
        el("td", {}, copy.error || copy.path || "")));
    const complete = pin.coverage.nodes > 0 && pin.coverage.verified === pin.coverage.nodes;
    return el("div", { class: "pin transfer", dataset: { pin: pin.id } },
      el("div", { class: "row" },
        el("strong", {}, pin.file), el("span", { class: "muted" }, `on ${targetText(pin.nodes)}`),
        badge(complete ? "verified" : "pending"),
        el("span", { class: "coverage" }, coverageText(pin.coverage)),
        el("button", { type: "button", class: "link verify", onclick: (e) => this.verify(e.target, pin.id) }, "verify"),
        el("button", { type: "button", class: "link unpin", onclick: (e) => this.unpin(e.target, pin.id) }, "unpin")),
      pin.problem ? el("p", { class: "problem" }, pin.problem) : null,
      el("details", { open },
        el("summary", {}, "Each node's copy"),
        el("table", { class: "grid" },
          el("thead", {}, el("tr", {}, el("th", {}, "Node"), el("th", {}, "Copy"), el("th", {}, "Path or why"))),
          el("tbody", {}, ...rows))));
  }

  async verify(button, id) {
    await this.act(button, async () => this.saved(await api("POST", `/api/pins/${id}/verify`)));
  }

  async unpin(button, id) {
    await this.act(button, async () => {
      await api("DELETE", `/api/pins/${id}`);
      this.removed(id);
    });
  }
}
