// The cruster console: reads the admin API every two seconds and draws it. No framework,
// no build step; every value from the API is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

let token = sessionStorage.getItem("cruster-token") || "";
let selectedExecution = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

async function api(path, method) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { method: method || "GET", headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    $("token-form").hidden = false;
  }
  if (!response.ok) {
    throw new Error(body.error || ("HTTP " + response.status + " from " + path));
  }
  return body;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
  $("error").hidden = !err;
}

function age(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function colorOf(address, runners) {
  const i = runners.indexOf(address);
  return i < 0 ? "#ccc" : PALETTE[i % PALETTE.length];
}

function drawCluster(cluster) {
  $("runner-address").textContent = cluster.runner;
  $("mode").textContent = cluster.actions_allowed ? "actions enabled" : "read-only";
  document.body.classList.toggle("read-only", !cluster.actions_allowed);
  const addresses = cluster.runners.map((r) => r.address);
  const shardCounts = {};
  for (const group of cluster.shard_groups) {
    for (const [runner, n] of Object.entries(group.shards_per_runner)) {
      shardCounts[runner] = (shardCounts[runner] || 0) + n;
    }
  }
  fill($("runners").tBodies[0], cluster.runners.map((r) => el("tr",
    { class: "runner", "data-address": r.address },
    el("td", {}, el("span", { class: "swatch", style: "background:" + colorOf(r.address, addresses) }),
      r.address + (r.is_self ? " (this runner)" : "")),
    el("td", {}, age(r.age_ms)),
    el("td", {}, r.weight),
    el("td", {}, r.healthy === null ? "no check" : (r.healthy ? "healthy" : "unreachable")),
    el("td", {}, shardCounts[r.address] || 0))));

  const groups = cluster.shard_groups.map((group) => {
    const size = 12, columns = 30;
    const rows = Math.ceil(group.owners.length / columns);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 " + columns * size + " " + rows * size);
    svg.setAttribute("class", "shard-grid");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "owners of the shards of group " + group.group);
    group.owners.forEach((owner, i) => {
      const cell = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      cell.setAttribute("x", (i % columns) * size);
      cell.setAttribute("y", Math.floor(i / columns) * size);
      cell.setAttribute("width", size - 1);
      cell.setAttribute("height", size - 1);
      cell.setAttribute("fill", owner ? colorOf(owner, addresses) : "#ddd");
      const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = group.group + ":" + i + " → " + (owner || "no owner");
      cell.append(title);
      svg.append(cell);
    });
    return el("figure", {}, svg, el("figcaption", {},
      group.group + ": " + group.shards + " shards, " + group.held_here.length + " held here"));
  });
  $("shards").replaceChildren(...groups);
  fill($("moves"), cluster.recent_shard_moves.slice(0, 50).map((m) =>
    el("li", {}, m.at + " " + m.direction + " " + m.shard)));
}

function drawEntities(entities) {
  fill($("entity-types").tBodies[0], entities.entity_types.map((t) =>
    el("tr", {}, el("td", {}, t.entity_type), el("td", {}, t.active), el("td", {}, t.mailbox_depth))));
  fill($("busiest").tBodies[0], entities.busiest.map((b) =>
    el("tr", {}, el("td", {}, b.entity_type + "/" + b.entity_id), el("td", {}, b.shard),
      el("td", {}, b.pending))));
}

async function act(path) {
  try {
    await api(path, "POST");
    showError(null);
  } catch (err) {
    showError(err);
  }
  await refresh();
}

function drawMessages(counts, letters) {
  fill($("message-counts").tBodies[0], counts.by_entity_type.map((c) =>
    el("tr", {}, el("td", {}, c.entity_type), el("td", {}, c.pending), el("td", {}, c.retrying),
      el("td", {}, c.dead_lettered))));
  fill($("dead-letters").tBodies[0], letters.dead_letters.map((d) =>
    el("tr", { class: "dead-letter", "data-request-id": d.request_id },
      el("td", {}, el("code", {}, d.request_id)),
      el("td", {}, d.entity_type + "/" + d.entity_id),
      el("td", {}, d.tag),
      el("td", {}, d.attempts),
      el("td", { class: "reason" }, d.last_error),
      el("td", {},
        el("button", { class: "action retry", "data-id": d.request_id,
          onclick: () => act("api/dead-letters/" + d.request_id + "/retry") }, "Retry"),
        el("button", { class: "action danger purge", "data-id": d.request_id,
          onclick: () => act("api/dead-letters/" + d.request_id + "/purge") }, "Purge")))));
  $("no-dead-letters").hidden = letters.dead_letters.length > 0;
}

function result(r) {
  if (!r) return "";
  return "ok" in r ? JSON.stringify(r.ok) : "error: " + r.error;
}

async function drawJournal() {
  if (!selectedExecution) return;
  const execution = await api("api/workflows/" + encodeURIComponent(selectedExecution));
  $("journal-id").textContent = execution.execution_id + " (" + execution.status.name + ")";
  fill($("journal-entries"), execution.journal.map((j) =>
    el("tr", {}, el("td", {}, j.sequence), el("td", {}, j.activity), el("td", {}, j.attempts),
      el("td", {}, result(j.result)), el("td", {}, j.recorded_at))));
  fill($("journal-timers"), (execution.timers || []).map((t) =>
    el("tr", {}, el("td", {}, t.timer), el("td", {}, t.fire_at), el("td", {}, t.fired ? "yes" : "no"))));
  $("journal").hidden = false;
}

function drawWorkflows(workflows) {
  fill($("workflow-counts").tBodies[0], workflows.counts.map((c) =>
    el("tr", {}, el("td", {}, c.workflow), el("td", {}, c.status), el("td", {}, c.count))));
  fill($("executions").tBodies[0], workflows.executions.map((e) =>
    el("tr", { class: "execution", onclick: () => { selectedExecution = e.execution_id; drawJournal().catch(showError); } },
      el("td", {}, el("a", { href: "#journal" }, e.execution_id)), el("td", {}, e.workflow),
      el("td", {}, e.status.name), el("td", {}, e.updated_at))));
}

async function optional(path) {
  try {
    return await api(path);
  } catch (err) {
    return null;
  }
}

async function refresh() {
  try {
    const [cluster, entities, live] = await Promise.all([
      api("api/cluster"), api("api/entities"), optional("health/live")]);
    drawCluster(cluster);
    drawEntities(entities);
    $("health").textContent = live && live.live ? "live" : "stalled";
    $("health").className = "badge " + (live && live.live ? "ok" : "bad");
    const [counts, letters, workflows] = await Promise.all([
      optional("api/messages"), optional("api/dead-letters"), optional("api/workflows")]);
    if (counts && letters) drawMessages(counts, letters);
    if (workflows) drawWorkflows(workflows);
    await drawJournal();
    document.body.dataset.loaded = "true";
  } catch (err) {
    showError(err);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("cruster-token", token);
  $("token-form").hidden = true;
  showError(null);
  refresh();
});
$("retry-all").addEventListener("click", () => act("api/dead-letters/retry"));
$("purge-all").addEventListener("click", () => {
  if (confirm("Delete every dead letter?")) act("api/dead-letters/purge");
});

refresh();
setInterval(refresh, REFRESH_MS);
