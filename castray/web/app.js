// The CastRay page: state from /ws (snapshot + events), actions through the REST API.

import { api, upload } from "./api.js";
import { ThroughputChart } from "./chart.js";
import * as fmt from "./format.js";
import { $, badge, el } from "./dom.js";
import { LiveFeed } from "./live.js";
import { PinsPanel } from "./pins.js";

// ---- state ------------------------------------------------------------------------------

const state = {
  clusters: new Map(), // name -> ClusterInfo
  nodes: new Map(), // id -> Node
  groups: new Map(), // name -> members
  transfers: new Map(), // id -> Tracked (in flight, or finished since the page opened)
  discovered: [], // DiscoveredCluster from the last Discover
  files: [], // library
  messages: [], // {recipient, message}, newest first
};
const HISTORY_SIZE = 25;
const FINISHED_SHOWN = 8;
const MESSAGES_KEPT = 200;
const chart = new ThroughputChart($("throughput"));
const pins = new PinsPanel((button, work) => act(button, work));

/** A transfer as the page follows it: the snapshot plus per-recipient speed. */
class Tracked {
  constructor(transfer) {
    this.transfer = transfer;
    this.speed = {}; // recipient -> bytes/s (smoothed)
    this.seen = {}; // recipient -> [time s, bytes done]
    this.shownAt = Date.now();
  }

  progress(recipient, done, at) {
    const entry = this.transfer.recipients[recipient];
    if (!entry) return;
    const before = this.seen[recipient];
    const delta = done - (entry.bytes_done || 0);
    if (delta > 0) chart.add(delta, at);
    if (before && at > before[0] && done >= before[1]) {
      const instant = (done - before[1]) / (at - before[0]);
      const old = this.speed[recipient];
      this.speed[recipient] = old === undefined ? instant : 0.6 * instant + 0.4 * old;
    }
    this.seen[recipient] = [at, done];
    entry.bytes_done = Math.max(entry.bytes_done || 0, done);
    if (done > 0 && entry.status === "pending") entry.status = "running";
  }

  finish(recipient, recipientState) {
    const before = this.transfer.recipients[recipient];
    if (recipientState.status === "completed" && before) {
      chart.add(this.transfer.bytes_total - (before.bytes_done || 0));
    }
    this.transfer.recipients[recipient] = recipientState;
  }

  get finished() {
    return !["queued", "running"].includes(this.transfer.status);
  }
}

// ---- rendering ---------------------------------------------------------------------------

const dirty = new Set();
let frame = 0;

function schedule(...parts) {
  for (const part of parts) dirty.add(part);
  if (!frame) frame = requestAnimationFrame(renderDirty);
}

function renderDirty() {
  frame = 0;
  const parts = [...dirty];
  dirty.clear();
  for (const part of parts) RENDER[part]();
}

function renderSummary() {
  const nodes = [...state.nodes.values()];
  const alive = nodes.filter((n) => n.status === "alive").length;
  const external = [...state.clusters.values()].filter((c) => c.is_external).length;
  $("summary").textContent =
    `${alive} of ${nodes.length} nodes alive · ${state.clusters.size} cluster(s)` +
    (external ? `, ${external} external` : "");
}

function clusterName(gcs) {
  const cut = gcs.lastIndexOf(":");
  return `ext-${gcs.slice(0, cut).replace(/[[\]]/g, "").replaceAll(":", ".")}-${gcs.slice(cut + 1)}`;
}

function renderClusters() {
  const home = [...state.clusters.values()].find((c) => c.is_home);
  const homeRay = home && home.ray;
  $("home-cluster").replaceChildren(
    "Home cluster: ",
    home ? badge(home.status) : "–",
    homeRay ? ` Ray ${homeRay.ray_version} at ${homeRay.address}, ${homeRay.alive_nodes} node(s), ` +
      `${homeRay.cluster_resources.CPU ?? 0} CPU` : home && home.detail ? ` ${home.detail}` : "",
  );
  const rows = [...state.clusters.values()].map((c) => {
    const count = [...state.nodes.values()].filter((n) => n.cluster === c.name).length;
    const action = c.is_external
      ? el("button", { type: "button", class: "disconnect", onclick: () => disconnect(c.name) }, "Disconnect")
      : "";
    return el("tr", { dataset: { cluster: c.name } },
      el("td", {}, badge(c.name, c.is_external ? "external" : "cluster")),
      // The same kind of address for every cluster: its GCS, the dashboard on a second line.
      el("td", {}, c.ray ? c.ray.address : "–",
        c.ray && c.ray.dashboard_url ? el("div", { class: "muted" }, `dashboard ${c.ray.dashboard_url}`) : ""),
      el("td", {}, badge(c.status), c.detail ? el("div", { class: "muted" }, c.detail) : ""),
      el("td", {}, String(count)),
      el("td", {}, c.ray ? c.ray.ray_version : "–"),
      el("td", {}, action));
  });
  const connected = new Set([...state.clusters.values()].map((c) => c.ray && c.ray.address));
  for (const found of state.discovered) {
    if (connected.has(found.gcs_address) || state.clusters.has(clusterName(found.gcs_address))) continue;
    const address = found.dashboard_url || found.gcs_address;
    rows.push(el("tr", { dataset: { discovered: found.gcs_address } },
      el("td", {}, el("span", { class: "muted" }, "discovered")),
      el("td", {}, found.gcs_address, found.dashboard_url ? el("div", { class: "muted" }, `dashboard ${found.dashboard_url}`) : ""),
      el("td", {}, badge(found.reachable ? "not connected" : "no dashboard", found.reachable ? "pending" : "unreachable"),
        found.own ? "" : el("div", { class: "muted" }, `run by ${found.owner || "another user"}: connect it only if it is meant`),
        found.detail ? el("div", { class: "muted" }, found.detail) : ""),
      el("td", {}, found.alive_nodes === null ? "?" : String(found.alive_nodes)),
      el("td", {}, found.ray_version || "?"),
      el("td", {}, el("button", { type: "button", class: "connect", onclick: () => connect(address) }, "Connect"))));
  }
  $("clusters").replaceChildren(...rows);
}

function renderNodes() {
  const rows = [...state.nodes.values()].sort(byClusterThenId).map((n) => {
    const c = n.counters;
    return el("tr", { dataset: { node: n.id } },
      el("td", {}, n.id, n.kind === "named" ? el("span", { class: "muted" }, " (named)") : ""),
      el("td", {}, badge(n.cluster, n.is_external ? "external" : "cluster")),
      el("td", {}, n.address),
      el("td", {}, badge(n.status), n.detail ? el("div", { class: "muted" }, n.detail) : ""),
      el("td", {}, fmt.resources(n.resources)),
      el("td", {}, fmt.bytes(c.bytes_received)),
      el("td", {}, fmt.bytes(c.bytes_sent)),
      el("td", {}, `${c.transfers_ok} / ${c.transfers_failed}`),
      el("td", {}, `${c.transfers_sent_ok} / ${c.transfers_sent_failed}`),
      el("td", {}, `${c.messages_received} / ${c.messages_sent}`));
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No nodes yet.")));
  $("nodes").replaceChildren(...rows);
  renderNodeChoices();
}

function byClusterThenId(a, b) {
  return Number(a.is_external) - Number(b.is_external) || a.cluster.localeCompare(b.cluster) ||
    a.id.localeCompare(b.id, undefined, { numeric: true });
}

/** Refill a <select> while keeping what the user chose. */
function fillSelect(select, options, keepFirst = false) {
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  const fixed = keepFirst ? [select.options[0]] : [];
  select.replaceChildren(...fixed, ...options.map(([value, label]) =>
    el("option", { value, selected: chosen.has(value) }, label)));
}

let choicesKey = "";

/** Refill the node pickers only when the set of nodes changed: an open list stays open. */
function renderNodeChoices() {
  const alive = [...state.nodes.values()].filter((n) => n.status === "alive").sort(byClusterThenId);
  const key = [$("send-source").value, ...alive.map((n) => n.id), "|", ...state.nodes.keys()].join(",");
  if (key === choicesKey) return;
  choicesKey = key;
  const label = (n) => (n.is_external ? `${n.id} (${n.cluster})` : n.id);
  const options = alive.map((n) => [n.id, label(n)]);
  fillSelect($("send-source"), options);
  fillSelect($("message-sender"), options);
  fillSelect($("message-to"), options);
  fillSelect($("message-filter"), [...state.nodes.keys()].sort().map((id) => [id, id]), true);
  const source = $("send-source").value;
  const box = $("send-recipients");
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  box.replaceChildren(...alive.filter((n) => n.id !== source).map((n) =>
    el("label", {}, el("input", { type: "checkbox", value: n.id, checked: ticked.has(n.id) }), label(n))));
  if (!box.children.length) box.append(el("span", { class: "muted" }, "No other node is alive."));
  applyMode();
}

function renderGroups() {
  pins.choices(state.files, state.groups.keys());
  const options = [...state.groups.keys()].sort().map((name) => [name, name]);
  fillSelect($("send-group"), options, true);
  fillSelect($("message-group"), options, true);
  const items = [...state.groups.entries()].sort().map(([name, members]) =>
    el("li", {}, el("strong", {}, name), `: ${members.join(", ")} `,
      el("button", { type: "button", class: "link", onclick: () => deleteGroup(name) }, "delete")));
  if (!items.length) items.push(el("li", { class: "muted" }, "No groups yet."));
  $("groups").replaceChildren(...items);
}

function renderFiles() {
  pins.choices(state.files, state.groups.keys());
  fillSelect($("send-file"), state.files.map((f) => [f.name, `${f.name} (${fmt.bytes(f.size)})`]));
  if (!state.files.length) $("send-file").append(el("option", { value: "" }, "library is empty: upload or generate"));
}

function renderTransfers() {
  const tracked = [...state.transfers.values()];
  const live = tracked.filter((t) => !t.finished).map(transferCard);
  const done = tracked.filter((t) => t.finished).sort((a, b) => b.shownAt - a.shownAt).map(transferCard);
  if (!live.length) live.push(el("p", { class: "muted empty" }, "No transfers in flight."));
  if (!done.length) done.push(el("p", { class: "muted empty" }, "Nothing finished since this page opened."));
  $("transfers").replaceChildren(...live);
  $("finished").replaceChildren(...done);
}

function transferCard(tracked) {
  const t = tracked.transfer;
  const total = t.bytes_total || t.file.size || 0;
  const speeds = Object.values(tracked.speed);
  const speed = t.throughput_bps || (speeds.length ? Math.min(...speeds) : 0);
  const remaining = Math.max(...Object.values(t.recipients).map((r) => total - (r.bytes_done || 0)), 0);
  const eta = tracked.finished ? "" : ` · ETA ${fmt.duration(speed ? remaining / speed : NaN)}`;
  const cancel = tracked.finished ? "" :
    el("button", { type: "button", class: "cancel", onclick: () => cancelTransfer(t.id) }, "Cancel");
  const resume = tracked.finished && t.resumable ? resumeButton(t.id) : "";
  const rows = Object.entries(t.recipients).map(([rid, r]) => {
    const fraction = total ? Math.min(1, (r.bytes_done || 0) / total) : r.status === "completed" ? 1 : 0;
    const rSpeed = tracked.speed[rid];
    const rEta = r.status === "running" && rSpeed ? fmt.duration((total - r.bytes_done) / rSpeed) : "";
    return el("div", { class: "recipient", dataset: { recipient: rid, status: r.status } },
      el("span", {}, rid),
      el("div", { class: `bar ${r.status}`, role: "progressbar", "aria-label": `${rid} progress`,
        "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction * 100) },
      el("div", { style: `width:${(fraction * 100).toFixed(1)}%` })),
      el("span", { class: "percent" }, `${Math.round(fraction * 100)}%` +
        (r.files_done != null ? ` · ${r.files_done} files` : "")),
      el("span", {}, r.status === "running" ? fmt.rate(rSpeed) : fmt.bytes(r.bytes_done)),
      el("span", {}, rEta ? `ETA ${rEta}` : ""),
      el("span", {}, badge(r.status)),
      r.error ? el("div", { class: "error" }, r.error) : null);
  });
  return el("div", { class: "transfer", dataset: { transfer: t.id, status: t.status } },
    el("div", { class: "transfer-head" },
      el("strong", {}, t.file.name), el("span", {}, fmt.bytes(total)),
      t.folder_files != null ? el("span", { class: "folder-files" }, `folder of ${t.folder_files} files`) : null,
      el("span", {}, `${t.mode} from ${t.source_node} by ${t.transport}`), badge(t.status),
      t.rate_limit ? el("span", { class: "muted rate-limit" }, `≤ ${fmt.rate(t.rate_limit)}`) : null,
      el("span", { class: "muted" }, `${fmt.rate(speed)}${eta}`),
      el("code", { title: "transfer id" }, t.id), cancel, resume),
    t.origin ? el("div", { class: "muted origin" }, `fetched once from ${t.origin} by ${t.source_node}, which keeps a copy`) : null,
    t.transport_note ? el("div", { class: "muted note" }, `by ${t.transport}: ${t.transport_note}`) : null,
    t.placed_last && t.placed_last.length ? el("div", { class: "muted placed-last" }, `${t.placed_last.join(", ")}: at the end of the chain from the start, for the slow pace taken last time`) : null,
    t.library_file ? el("div", { class: "muted library" }, `kept in the library as ${t.library_file}`) : null,
    t.library_note ? el("div", { class: "muted note" }, `the library: ${t.library_note}`) : null,
    t.error ? el("div", { class: "muted" }, t.error) : null,
    rows);
}

async function renderHistory() {
  let page;
  try {
    page = await api("GET", `/api/transfers?limit=${HISTORY_SIZE}`);
  } catch (error) {
    notify(`Could not load the transfer history: ${error.message}`);
    return;
  }
  const rows = page.transfers.map((t) => el("tr", { dataset: { transfer: t.id } },
    el("td", {}, el("code", {}, t.id.slice(0, 8))),
    el("td", {}, badge(t.status), t.resumable ? resumeButton(t.id) : ""),
    el("td", {}, t.file.name),
    el("td", {}, fmt.bytes(t.bytes_total)),
    el("td", {}, t.source_node),
    el("td", {}, Object.keys(t.recipients).join(", ")),
    el("td", {}, fmt.rate(t.throughput_bps)),
    el("td", {}, fmt.time(t.finished_at))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "Nothing sent yet.")));
  $("history").replaceChildren(...rows);
}

function renderMessages() {
  const filter = $("message-filter").value;
  const items = state.messages.filter((m) => !filter || m.recipient === filter).slice(0, 100).map((m) => {
    const body = m.message.message_type === "json"
      ? JSON.stringify(m.message.content, null, 1) : String(m.message.content);
    return el("li", { dataset: { recipient: m.recipient } },
      el("span", { class: "muted" }, new Date(m.message.received_at * 1000).toLocaleTimeString(), " "),
      el("strong", {}, m.recipient), ` received from ${m.message.sender}`,
      el("pre", {}, body));
  });
  if (!items.length) items.push(el("li", { class: "muted" }, "No messages received yet."));
  $("messages").replaceChildren(...items);
}

function renderChart() {
  chart.draw();
  const now = chart.current();
  $("throughput-now").textContent = now ? `· ${fmt.rate(now)} now` : "";
}
// The chart moves on, and "now" falls to nothing, when no progress comes any more.
setInterval(renderChart, 1000);

const RENDER = {
  summary: renderSummary,
  clusters: renderClusters,
  nodes: renderNodes,
  groups: renderGroups,
  files: renderFiles,
  transfers: renderTransfers,
  history: renderHistory,
  messages: renderMessages,
  chart: renderChart,
};

// ---- live updates ------------------------------------------------------------------------

function applySnapshot(data) {
  state.clusters = new Map(data.clusters.map((c) => [c.name, c]));
  state.nodes = new Map(data.nodes.map((n) => [n.id, n]));
  state.groups = new Map(data.groups.map((g) => [g.name, g.members]));
  for (const [id, t] of state.transfers) if (!t.finished) state.transfers.delete(id);
  for (const t of data.transfers) state.transfers.set(t.id, new Tracked(t));
  schedule("summary", "clusters", "nodes", "groups", "transfers", "history");
  act(null, () => loadFiles()); // the library is not in the snapshot; events keep it fresh
  act(null, () => pins.load()); // nor are the pins
}

let statusRefresh = null;

/** Cluster events name the cluster; its full picture comes from /api/status. */
function refreshClusters() {
  clearTimeout(statusRefresh);
  statusRefresh = setTimeout(async () => {
    try {
      const status = await api("GET", "/api/status");
      state.clusters = new Map(status.clusters.map((c) => [c.name, c]));
      for (const n of status.node_statuses) state.nodes.set(n.id, n);
      schedule("summary", "clusters", "nodes");
    } catch (error) {
      notify(`Could not refresh the clusters: ${error.message}`);
    }
  }, 100);
}

const HANDLERS = {
  node_added: (d) => { state.nodes.set(d.node.id, d.node); schedule("summary", "nodes", "clusters"); },
  node_status: (d) => HANDLERS.node_added(d),
  node_updated: (d) => { state.nodes.set(d.node.id, d.node); schedule("nodes"); },
  node_removed: (d) => { state.nodes.delete(d.node_id); schedule("summary", "nodes", "clusters"); },
  cluster_discovered: (d) => {
    const others = state.discovered.filter((c) => c.gcs_address !== d.cluster.gcs_address);
    state.discovered = [...others, d.cluster];
    schedule("clusters");
  },
  cluster_disconnected: (d) => {
    state.clusters.delete(d.cluster);
    schedule("summary", "clusters");
    refreshClusters();
  },
  transfer_started: (d) => {
    const known = state.transfers.get(d.transfer.id);
    // A resumed transfer starts again under its id: its card becomes live again.
    if (known && !known.finished) {
      Object.assign(known.transfer, d.transfer, { recipients: known.transfer.recipients });
    } else state.transfers.set(d.transfer.id, new Tracked(d.transfer));
    schedule("transfers");
  },
  transfer_progress: (d, at) => {
    const tracked = state.transfers.get(d.transfer_id);
    if (!tracked) return;
    tracked.transfer.bytes_total = d.bytes_total;
    if (tracked.transfer.status === "queued") tracked.transfer.status = "running";
    for (const [rid, done] of Object.entries(d.bytes_done)) tracked.progress(rid, done, at);
    schedule("transfers", "chart");
  },
  recipient_completed: (d) => {
    const tracked = state.transfers.get(d.transfer_id);
    if (tracked) tracked.finish(d.recipient, d.recipient_state);
    schedule("transfers", "chart");
  },
  recipient_failed: (d) => HANDLERS.recipient_completed(d),
  transfer_finished: (d) => {
    const tracked = state.transfers.get(d.transfer.id) || new Tracked(d.transfer);
    for (const [rid, r] of Object.entries(d.transfer.recipients)) tracked.finish(rid, r);
    tracked.transfer = d.transfer;
    tracked.shownAt = Date.now();
    state.transfers.set(d.transfer.id, tracked);
    forgetOldFinished();
    schedule("transfers", "history", "chart");
  },
  message_received: (d) => {
    state.messages.unshift({ recipient: d.recipient, message: d.message });
    state.messages.length = Math.min(state.messages.length, MESSAGES_KEPT);
    schedule("messages");
  },
  file_added: (d) => {
    state.files = [...state.files.filter((f) => f.name !== d.file.name), d.file]
      .sort((a, b) => a.name.localeCompare(b.name));
    schedule("files");
  },
  file_removed: (d) => {
    state.files = state.files.filter((f) => f.name !== d.name);
    schedule("files");
  },
  group_saved: (d) => { state.groups.set(d.group.name, d.group.members); schedule("groups"); },
  group_deleted: (d) => { state.groups.delete(d.name); schedule("groups"); },
  pin_saved: (d) => pins.saved(d.pin),
  pin_coverage: (d) => pins.saved(d.pin),
  pin_removed: (d) => pins.removed(d.pin_id),
};

/** Keep cards of only the newest FINISHED_SHOWN finished transfers; the history has the rest. */
function forgetOldFinished() {
  const finished = [...state.transfers.values()].filter((t) => t.finished)
    .sort((a, b) => b.shownAt - a.shownAt);
  for (const old of finished.slice(FINISHED_SHOWN)) state.transfers.delete(old.transfer.id);
}

function onEvent(type, data, at) {
  const handler = HANDLERS[type];
  if (handler) handler(data, at);
  else if (type.startsWith("cluster_")) refreshClusters();
}

const REST_REFRESH_MS = 5000;
let restRefresh = null;

/** Live over /ws; when it cannot connect, what REST can tell, refreshed until /ws is back. */
function onLiveState(connected, failures = 0) {
  const pill = $("live");
  const unavailable = !connected && failures >= 2;
  pill.textContent = connected ? "live" : unavailable ? "live updates unavailable" : "reconnecting…";
  pill.title = unavailable ? "The /ws event stream does not connect; showing what the REST API says, "
    + "refreshed every few seconds." : "Live updates over /ws";
  pill.className = `pill ${connected ? "on" : "off"}`;
  if (connected) {
    clearInterval(restRefresh);
    restRefresh = null;
  } else if (unavailable && !restRefresh) {
    loadFromRest();
    restRefresh = setInterval(loadFromRest, REST_REFRESH_MS);
  }
}

/** The picture /ws would give, from REST calls: clusters, nodes, groups, transfers in flight. */
async function loadFromRest() {
  try {
    const [status, groups, page] = await Promise.all([
      api("GET", "/api/status"), api("GET", "/api/groups"), api("GET", `/api/transfers?limit=${HISTORY_SIZE}`),
    ]);
    applySnapshot({
      clusters: status.clusters,
      nodes: status.node_statuses,
      groups,
      transfers: page.transfers.filter((t) => ["queued", "running"].includes(t.status)),
    });
  } catch (error) {
    notify(`Could not load the current state: ${error.message}`);
  }
}

// ---- notices -----------------------------------------------------------------------------

function notify(text, kind = "error") {
  const close = el("button", { type: "button", "aria-label": "Dismiss" }, "×");
  const notice = el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("span", {}, text), close);
  close.addEventListener("click", () => notice.remove());
  $("notices").append(notice);
  if (kind !== "error") setTimeout(() => notice.remove(), 5000);
  while ($("notices").children.length > 5) $("notices").firstChild.remove();
}

/** Run an action from a button: disable it meanwhile; any failure becomes a notice. */
async function act(button, work) {
  if (button) button.disabled = true;
  try {
    await work();
  } catch (error) {
    notify(error.message);
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- actions -----------------------------------------------------------------------------

async function discover() {
  await act($("discover"), async () => {
    const result = await api("POST", "/api/cluster/discover-external");
    state.discovered = result.discovered_clusters;
    schedule("clusters");
    refreshClusters();
    // Nothing chosen among several clusters is not an error: the list shows them to pick from.
    notify(result.message, result.success || result.candidates.length ? "info" : "error");
  });
}

async function connect(address, rayToken) {
  await act(null, async () => {
    const body = { cluster_address: address };
    if (rayToken) body.ray_token = rayToken;
    const result = await api("POST", "/api/cluster/connect-external", body);
    refreshClusters();
    notify(result.message, "info");
  });
}

async function disconnect(name) {
  await act(null, async () => {
    const result = await api("DELETE", `/api/cluster/disconnect-external?cluster=${encodeURIComponent(name)}`);
    const found = await api("GET", "/api/cluster/discover");
    state.discovered = found.clusters;
    schedule("clusters");
    notify(result.message, "info");
  });
}

async function loadFiles(select) {
  state.files = await api("GET", "/api/files");
  renderFiles();
  if (select) $("send-file").value = select;
}

async function uploadFile() {
  const file = $("upload-input").files[0];
  if (!file) { notify("Choose a file to upload first."); return; }
  const bar = $("upload-progress");
  await act($("upload-start"), async () => {
    bar.hidden = false;
    bar.value = 0;
    $("upload-status").textContent = "uploading…";
    try {
      const stored = await upload(file, (fraction) => { bar.value = fraction; });
      $("upload-status").textContent = `${stored.file} stored (${fmt.bytes(stored.size)})`;
      await loadFiles(stored.file);
    } catch (error) {
      $("upload-status").textContent = "";
      throw error;
    } finally {
      bar.hidden = true;
    }
  });
}

async function generateFile() {
  await act($("generate-start"), async () => {
    const body = { size: $("generate-size").value.trim(), content_type: $("generate-type").value };
    const name = $("generate-name").value.trim();
    if (name) body.name = name;
    const made = await api("POST", "/api/file-generator/create", body);
    await loadFiles(made.file);
    notify(`Generated ${made.file} (${fmt.bytes(made.size)}).`, "info");
  });
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function applyMode() {
  const broadcast = mode() === "broadcast";
  for (const input of $("recipients-field").querySelectorAll("input, select")) input.disabled = broadcast;
}

function tickedRecipients() {
  return [...$("send-recipients").querySelectorAll("input:checked")].map((i) => i.value);
}

async function sendFile(event) {
  event.preventDefault();
  await act($("send-start"), async () => {
    const url = $("send-url").value.trim();
    const body = { source_node: $("send-source").value, mode: mode() };
    if (url) body.source_url = url;
    else body.file = $("send-file").value;
    if (url && $("send-keep").checked) body.keep_in_library = true;
    if (!url && !body.file) {
      throw new Error("Choose a file: pick one from the library, upload or generate one, or give a URL.");
    }
    if ($("send-transport").value) body.transport = $("send-transport").value;
    const rate = $("send-rate").value.trim();
    if (rate) body.rate_limit = rate;
    const group = $("send-group").value;
    if (body.mode !== "broadcast") {
      if (group) body.group = group;
      else body.recipients = tickedRecipients();
      if (!group && !body.recipients.length) throw new Error("Tick at least one recipient, or choose a group.");
      if (body.mode === "unicast" && (group || body.recipients.length > 1)) body.mode = "multicast";
    }
    if (url) notify(`${body.source_node || "A node"} fetches the URL once and sends it on as it arrives.`, "info");
    const accepted = await api("POST", "/api/transfers", body);
    if (url) { $("send-url").value = ""; $("send-keep").checked = false; }
    if (!state.transfers.has(accepted.transfer_id)) {
      const transfer = await api("GET", `/api/transfers/${accepted.transfer_id}`);
      if (!state.transfers.has(transfer.id)) state.transfers.set(transfer.id, new Tracked(transfer));
      schedule("transfers");
    }
  });
}

async function cancelTransfer(id) {
  await act(null, async () => {
    await api("DELETE", `/api/transfers/${id}`);
  });
}

function resumeButton(id) {
  return el("button", { type: "button", class: "resume", title: "Send the recipients only what they lack",
    onclick: () => resumeTransfer(id) }, "Resume");
}

async function resumeTransfer(id) {
  await act(null, async () => {
    await api("POST", `/api/transfers/${id}/resume`);
  });
}

async function saveGroup(event) {
  event.preventDefault();
  await act(null, async () => {
    const members = tickedRecipients();
    if (!members.length) throw new Error("Tick the nodes of the group under To first.");
    const name = $("group-name").value.trim();
    const method = state.groups.has(name) ? "PUT" : "POST";
    const path = method === "PUT" ? `/api/groups/${encodeURIComponent(name)}` : "/api/groups";
    await api(method, path, method === "PUT" ? { members } : { name, members });
    notify(`Group ${name} saved.`, "info");
  });
}

async function deleteGroup(name) {
  await act(null, () => api("DELETE", `/api/groups/${encodeURIComponent(name)}`));
}

async function sendMessage(event) {
  event.preventDefault();
  await act(null, async () => {
    const type = $("message-type").value;
    const text = $("message-content").value;
    let content = text;
    if (type === "json") {
      try { content = JSON.parse(text); } catch (error) { throw new Error(`That is not valid JSON: ${error.message}`); }
    }
    const body = { sender: $("message-sender").value, message_type: type, content };
    const group = $("message-group").value;
    const to = [...$("message-to").selectedOptions].map((o) => o.value);
    if ($("message-all").checked) body.cast_type = "broadcast";
    else if (group) Object.assign(body, { cast_type: "multicast", group_id: group });
    else if (to.length) Object.assign(body, { cast_type: to.length > 1 ? "multicast" : "unicast", recipients: to });
    else throw new Error("Choose who gets the message: nodes, a group, or everyone.");
    const result = await api("POST", "/api/send", body);
    const failed = Object.entries(result.failed).map(([id, why]) => `${id}: ${why}`);
    if (failed.length) notify(`Not delivered to ${failed.join("; ")}`);
    else notify(`Message delivered to ${result.delivered.join(", ")}.`, "info");
  });
}

async function showMessagesOf() {
  const node = $("message-filter").value;
  if (node) {
    await act(null, async () => {
      const received = await api("GET", `/api/nodes/${encodeURIComponent(node)}/messages?count=100`);
      const ids = new Set(state.messages.map((m) => m.message.message_id + m.recipient));
      for (const message of received) {
        if (!ids.has(message.message_id + node)) state.messages.push({ recipient: node, message });
      }
      state.messages.sort((a, b) => b.message.received_at - a.message.received_at);
    });
  }
  renderMessages();
}

// ---- wiring ------------------------------------------------------------------------------

$("discover").addEventListener("click", discover);
$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  connect($("connect-address").value.trim(), $("connect-token").value);
});
$("files-refresh").addEventListener("click", () => act(null, () => loadFiles()));
$("upload-start").addEventListener("click", uploadFile);
$("generate-start").addEventListener("click", generateFile);
$("send-form").addEventListener("submit", sendFile);
$("send-source").addEventListener("change", renderNodeChoices);
for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", applyMode);
$("group-form").addEventListener("submit", saveGroup);
$("message-form").addEventListener("submit", sendMessage);
$("message-filter").addEventListener("change", showMessagesOf);

// The first call asks for the API token if the server wants one; then go live.
act(null, () => api("GET", "/api/status")).then(() =>
  new LiveFeed({ onSnapshot: applySnapshot, onEvent, onState: onLiveState }).start());
setInterval(() => {
  schedule("chart");
  if ([...state.transfers.values()].some((t) => !t.finished)) schedule("transfers");
}, 1000);
schedule("chart", "messages");
