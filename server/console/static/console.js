// VisualMixer console: every page is drawn here from the JSON endpoints, refreshed by
// polling (no reload). Text from runs and clients is only ever set as textContent, never
// parsed as HTML: a reason string comes from a client and may be hostile.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#2458d3", "#d9480f", "#1a7f37", "#8250df", "#bf8700", "#cf222e", "#0a7ea4", "#6e7781"];
const SVG = "http://www.w3.org/2000/svg";

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
  return body;
}

function num(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 120) return `${value.toFixed(0)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function bytes(value) {
  const units = ["B", "kB", "MB", "GB"];
  let k = 0;
  while (Math.abs(value) >= 1000 && k < units.length - 1) { value /= 1000; k++; }
  return `${+value.toPrecision(3)} ${units[k]}`;
}

function when(epochSeconds) {
  if (!epochSeconds) return "–";
  return new Date(epochSeconds * 1000).toLocaleString();
}

function badge(status) {
  const kind = String(status || "unknown").split(":").pop();
  return h("span", { class: `badge ${kind}`, "data-status": status }, status || "unknown");
}

function main(...children) {
  const el = document.getElementById("main");
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return el;
}

function showSuperlink(name, error) {
  const el = document.getElementById("superlink");
  el.textContent = name ? `SuperLink: ${name}${error ? " (unreachable)" : ""}` : "runs dir only";
  el.title = error || "";
}

// ---- charts: inline SVG, so nothing is fetched --------------------------------------------
// series: [{name, points: [[x, y], ...], dashed}]; lines: [{name, y}] drawn as references.
function lineChart(title, series, { lines = [], yLabel = "", id = null, zero = false } = {}) {
  const W = 460, H = 220, L = 52, R = 12, T = 10, B = 28;
  const pts = series.flatMap((sr) => sr.points).filter((p) => Number.isFinite(p[1]));
  const ys = pts.map((p) => p[1]).concat(lines.map((l) => l.y));
  const xs = pts.map((p) => p[0]);
  const box = h("div", { class: "chart", id });
  box.append(h("h3", {}, title));
  if (!pts.length) {
    box.append(h("p", { class: "muted" }, "no data yet"));
    return box;
  }
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  // Counts and sizes start at 0; ticks fall on round numbers (1, 2 or 5 times a power of 10).
  let [lo, hi] = [zero ? Math.min(0, ...ys) : Math.min(...ys), Math.max(...ys)];
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const raw = (hi - lo) / 4, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  const y0 = Math.floor(lo / step) * step, y1 = Math.ceil(hi / step) * step;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (let y = y0; y <= y1 + step / 2; y += step) {
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(y), y2: Y(y), stroke: "#e5e8ee" }));
    svg.append(s("text", { x: L - 6, y: Y(y) + 4, "text-anchor": "end", "font-size": 10, fill: "#667085" },
      yLabel === "bytes" ? bytes(y) : Math.abs(y) >= 1e4 ? y.toExponential(1) : String(+y.toPrecision(4))));
  }
  const xt = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(xt.length / 8));
  xt.filter((_, i) => i % every === 0).forEach((x) => {
    svg.append(s("text", { x: X(x), y: H - 10, "text-anchor": "middle", "font-size": 10, fill: "#667085" }, x));
  });
  const legend = h("div", { class: "legend" });
  lines.forEach((l) => {
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(l.y), y2: Y(l.y), stroke: "#cf222e", "stroke-dasharray": "4 3" }));
    legend.append(h("span", {}, h("i", { style: "background:#cf222e" }), `${l.name} ${num(l.y, 3)}`));
  });
  series.forEach((sr, i) => {
    const color = COLORS[i % COLORS.length];
    const good = sr.points.filter((p) => Number.isFinite(p[1]));
    if (!good.length) return;
    const d = good.map((p, k) => `${k ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg.append(s("path", { d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": sr.dashed ? "5 3" : "" }));
    good.forEach((p) => svg.append(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color })));
    legend.append(h("span", {}, h("i", { style: `background:${color}` }), sr.name));
  });
  box.append(svg, legend);
  return box;
}

function seriesOf(rounds, key, name, opts = {}) {
  return { name: name || key, points: rounds.filter((r) => typeof r[key] === "number").map((r) => [r.round, r[key]]), ...opts };
}

// ---- runs page -----------------------------------------------------------------------------
const RUN_COLUMNS = [
  ["name", "run"], ["status", "status"], ["exchange", "exchange"], ["defense", "defense"],
  ["dataset", "dataset"], ["model", "model"], ["rounds-done", "rounds"], ["federated-accuracy", "fed. accuracy"],
  ["central-accuracy", "central accuracy"], ["elapsed", "elapsed"], ["started-at", "started"],
];
const runsState = { sort: "started-at", desc: true, filters: { status: "", exchange: "", defense: "" }, selected: new Set() };

function runsTable(rows) {
  const f = runsState.filters;
  const shown = rows.filter((r) => (!f.status || String(r.status).includes(f.status)) &&
    (!f.exchange || r.exchange === f.exchange) && (!f.defense || r.defense === f.defense));
  const key = runsState.sort;
  shown.sort((a, b) => {
    const [x, y] = [a[key], b[key]];
    const cmp = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
    return runsState.desc ? -cmp : cmp;
  });
  const head = h("tr", {}, h("th", {}, ""), RUN_COLUMNS.map(([k, label]) => h("th", {
    class: "sortable", "data-sort": k, onclick: () => { runsState.desc = runsState.sort === k ? !runsState.desc : false; runsState.sort = k; refreshRuns(); },
  }, label + (runsState.sort === k ? (runsState.desc ? " ▾" : " ▴") : ""))));
  const body = shown.map((r) => h("tr", { "data-run": r.name || `flwr-${r["flower-run-id"]}` },
    h("td", {}, r.name ? h("input", { type: "checkbox", checked: runsState.selected.has(r.name), onchange: (e) => {
      if (e.target.checked) runsState.selected.add(r.name); else runsState.selected.delete(r.name);
    } }) : ""),
    h("td", {}, r.name ? h("a", { href: `/runs/${encodeURIComponent(r.name)}` }, r.name) : h("span", { class: "muted" }, `Flower run ${r["flower-run-id"]}`)),
    h("td", { title: r.reason || "" }, badge(r.status), r.reason && r.status !== "finished:completed" ? h("div", { class: "muted" }, String(r.reason).slice(0, 90)) : null),
    h("td", {}, r.exchange || "–"), h("td", {}, r.defense || "–"), h("td", {}, r.dataset || "–"), h("td", {}, r.model || "–"),
    h("td", { class: "num" }, r.name ? `${r["rounds-done"]} / ${r["rounds-planned"] ?? "?"}` : "–"),
    h("td", { class: "num" }, num(r["federated-accuracy"])), h("td", { class: "num" }, num(r["central-accuracy"])),
    h("td", { class: "num" }, r.name ? seconds(r.elapsed) : "–"), h("td", {}, when(r["started-at"]))));
  return h("table", { id: "runs" }, h("thead", {}, head), h("tbody", {}, body));
}

function filterSelect(field, rows) {
  const values = [...new Set(rows.map((r) => (field === "status" ? r.status : r[field])).filter(Boolean))].sort();
  return h("label", {}, `${field} `, h("select", { "data-filter": field, onchange: (e) => { runsState.filters[field] = e.target.value; refreshRuns(); } },
    h("option", { value: "" }, "all"), values.map((v) => h("option", { value: v, selected: runsState.filters[field] === v }, v))));
}

let runsData = null;
async function refreshRuns(fetchNew = false) {
  try {
    if (fetchNew || !runsData) runsData = await api("/api/runs");
  } catch (err) {
    main(h("div", { class: "error" }, err.message));
    return;
  }
  showSuperlink(runsData.superlink, runsData["superlink-error"]);
  const rows = runsData.runs;
  main(
    h("h1", {}, "Runs"),
    runsData["superlink-error"] ? h("div", { class: "note" }, runsData["superlink-error"]) : null,
    h("div", { class: "filters" }, ["status", "exchange", "defense"].map((f) => filterSelect(f, rows)),
      h("button", { id: "compare-selected", onclick: () => {
        const names = [...runsState.selected];
        if (names.length < 2) { alert("Pick two runs or more to compare."); return; }
        location.href = `/compare?runs=${names.map(encodeURIComponent).join(",")}`;
      } }, "Compare selected")),
    rows.length ? runsTable(rows) : h("p", { class: "muted" }, "No runs yet. Start one with `make run` or `flwr run .`."),
    runsData.comparisons.length ? [h("h2", {}, "Comparisons (simulations.compare)"),
      h("ul", {}, runsData.comparisons.map((c) => h("li", {}, h("a", { href: `/compare/${encodeURIComponent(c)}` }, c))))] : null,
  );
}

// ---- run page ------------------------------------------------------------------------------
const runName = () => decodeURIComponent(location.pathname.split("/")[2] || "");
let stopRequested = false;

function runCharts(d) {
  const rounds = d.rounds.filter((r) => r.status === "completed");
  const cfg = d["run-config"];
  const charts = [
    lineChart("Accuracy per round", [seriesOf(rounds, "federated-accuracy", "federated (clients' held-out data)"),
      seriesOf(rounds, "central-accuracy", "central (server's test set)", { dashed: true })], { id: "chart-accuracy" }),
    lineChart("Loss per round", [seriesOf(rounds, "train-loss", "train"), seriesOf(rounds, "federated-loss", "federated"),
      seriesOf(rounds, "central-loss", "central", { dashed: true })], { id: "chart-loss" }),
    lineChart("Bytes per round", [seriesOf(rounds, "bytes-up", "up (received)"), seriesOf(rounds, "bytes-down", "down (sent)")], { id: "chart-bytes", yLabel: "bytes", zero: true }),
    lineChart("Replies per round", [seriesOf(rounds, "replies", "accepted"), seriesOf(rounds, "rejected", "rejected")], { id: "chart-replies", zero: true }),
  ];
  // Each defense says what to draw for it (GET /api/defenses; common/defenses).
  for (const c of (d["defense-info"] || {}).charts || []) {
    const lines = c.target && typeof cfg[c.target] === "number" ? [{ name: c["target-label"], y: cfg[c.target] }] : [];
    let series = c.series.map(([key, label]) => seriesOf(rounds, key, label));
    if (c["per-node"]) {
      const key = c["per-node"];
      const nodes = [...new Set(rounds.flatMap((r) => Object.keys(r[key] || {})))].sort();
      series = nodes.map((n) => ({
        name: `node ${n}`, points: rounds.filter((r) => r[key] && typeof r[key][n] === "number").map((r) => [r.round, r[key][n]]),
      }));
    }
    charts.push(lineChart(c.title, series, { id: c.id, lines, zero: c.zero }));
  }
  return h("div", { class: "charts" }, charts);
}

function eventsTable(events) {
  const bad = events.filter((e) => e.outcome !== "accepted").slice(-50).reverse();
  if (!bad.length) return h("p", { class: "muted", id: "events" }, "Every reply so far was accepted.");
  return h("table", { id: "events" }, h("tr", {}, ["round", "node", "message", "outcome", "reason"].map((c) => h("th", {}, c))),
    bad.map((e) => h("tr", {}, h("td", { class: "num" }, e.round), h("td", {}, e.node), h("td", {}, e.what),
      h("td", {}, badge(e.outcome === "rejected" ? "rejected:failed" : `${e.outcome}:stopped`)), h("td", {}, e.reason || ""))));
}

function roundsTable(rounds) {
  const cols = [["round", 0], ["train-loss", 4], ["federated-accuracy", 4], ["central-accuracy", 4], ["vfe-sent", 3],
    ["epsilon-max", 2], ["replies", 0], ["rejected", 0], ["bytes-up", 0], ["seconds", 1]];
  return h("table", { id: "rounds" }, h("tr", {}, cols.map(([c]) => h("th", {}, c))),
    rounds.slice().reverse().map((r) => r.status === "failed"
      ? h("tr", {}, h("td", { class: "num" }, r.round), h("td", { colspan: cols.length - 1 }, badge("finished:failed"), " ", r.reason || ""))
      : h("tr", {}, cols.map(([c, d]) => h("td", { class: "num" }, num(r[c], d))))));
}

async function stopRun(name) {
  if (!confirm(`Stop run ${name}? Its checkpoint stays; starting it again with the same run-name resumes it.`)) return;
  stopRequested = true;
  const button = document.getElementById("stop");
  if (button) { button.disabled = true; button.textContent = "Stopping…"; }
  try {
    await api(`/api/runs/${encodeURIComponent(name)}/stop`, { method: "POST", headers: { "X-Console": "stop" } });
  } catch (err) {
    stopRequested = false;
    alert(`Could not stop the run: ${err.message}`);
  }
  refreshRun();
}

async function refreshRun() {
  const name = runName();
  let d;
  try {
    d = await api(`/api/runs/${encodeURIComponent(name)}`);
  } catch (err) {
    main(h("div", { class: "error" }, err.message));
    return;
  }
  showSuperlink(d.superlink, d["superlink-error"]);
  const live = ["running", "starting", "pending"].includes(d.status);
  const cfg = d["run-config"];
  const file = (f) => `/api/runs/${encodeURIComponent(name)}/files/${f}`;
  const stopping = stopRequested && live;
  main(
    h("h1", {}, name, " ", badge(stopping ? "stopping" : d.status)),
    h("p", { class: "muted" },
      `${d.exchange} exchange · ${d.defense} · ${d.dataset} · ${d.model} · `,
      h("span", { id: "rounds-done", "data-rounds": d["rounds-done"] }, `round ${d["rounds-done"]} of ${d["rounds-planned"]}`),
      ` · ${seconds(d.elapsed)}`, d["flower-run-id"] !== null ? ` · Flower run ${d["flower-run-id"]}` : ""),
    d.reason ? h("div", { class: d.status.includes("failed") ? "error" : d.status === "finished:completed" ? "muted" : "note", id: "reason" }, d.reason) : null,
    d["superlink-error"] ? h("div", { class: "note" }, d["superlink-error"]) : null,
    d.warnings.map((w) => h("div", { class: "note warning" }, w)),
    d["skipped-lines"].length ? h("div", { class: "note", id: "skipped" }, `Skipped ${d["skipped-lines"].length} line(s): `, d["skipped-lines"].slice(-3).join("; ")) : null,
    live && d.superlink ? h("button", { id: "stop", class: "danger", disabled: stopping, onclick: () => stopRun(name) }, stopping ? "Stopping…" : "Stop run") : null,
    runCharts(d),
    h("h2", {}, "Rounds"), roundsTable(d.rounds),
    h("h2", {}, "Replies not accepted as sent"), eventsTable(d.events),
    d.files.includes("samples.png") ? [h("h2", {}, "What the server saw"),
      h("p", { class: "muted" }, "Uploads exactly as the server received them. Nothing recognisable should be here."),
      h("div", { class: "gallery" }, h("img", { id: "gallery", src: file("samples.png"), alt: "uploads as received" }))] : null,
    h("div", { class: "row" },
      h("div", {}, h("h2", {}, "Configuration"), h("dl", { class: "config", id: "config" },
        Object.entries(cfg).map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))]))),
      h("div", {}, h("h2", {}, "Files"), h("ul", { id: "files" },
        d.files.filter((f) => f !== "samples.png").map((f) => h("li", {}, h("a", { href: file(f), download: f }, f)))))),
  );
  if (!live) stopRequested = false;
}

// ---- compare page --------------------------------------------------------------------------
const COMPARE_METRICS = ["federated-accuracy", "central-accuracy", "train-loss", "federated-loss", "vfe-sent", "epsilon-max", "bytes-up", "seconds"];

async function refreshCompare() {
  const parts = location.pathname.split("/");
  if (parts[2]) return compareFolder(decodeURIComponent(parts[2]));
  const params = new URLSearchParams(location.search);
  const chosen = (params.get("runs") || "").split(",").filter(Boolean);
  const metric = params.get("metric") || "federated-accuracy";
  const list = await api("/api/runs");
  showSuperlink(list.superlink, list["superlink-error"]);
  const names = list.runs.filter((r) => r.name).map((r) => r.name);
  const details = await Promise.all(chosen.map((n) => api(`/api/runs/${encodeURIComponent(n)}`).catch(() => null)));
  const go = (runs, m) => { location.search = `?runs=${runs.map(encodeURIComponent).join(",")}&metric=${m}`; };
  main(
    h("h1", {}, "Compare runs"),
    h("div", { class: "filters" },
      h("label", {}, "metric ", h("select", { id: "metric", onchange: (e) => go(chosen, e.target.value) },
        COMPARE_METRICS.map((m) => h("option", { value: m, selected: m === metric }, m))))),
    h("div", { class: "filters", id: "pick" }, names.map((n) => h("label", {}, h("input", {
      type: "checkbox", value: n, checked: chosen.includes(n),
      onchange: (e) => go(e.target.checked ? [...chosen, n] : chosen.filter((c) => c !== n), metric),
    }), ` ${n}`))),
    chosen.length < 2 ? h("p", { class: "muted" }, "Pick two runs or more.") : null,
    h("div", { class: "charts" }, lineChart(`${metric} per round`, details.filter(Boolean).map((d) =>
      seriesOf(d.rounds.filter((r) => r.status === "completed"), metric, d.name)), { id: "chart-compare" })),
    details.filter(Boolean).length ? h("table", { id: "compare-table" },
      h("tr", {}, ["run", "status", "exchange", "defense", "rounds", "fed. accuracy", "central accuracy", "elapsed"].map((c) => h("th", {}, c))),
      details.filter(Boolean).map((d) => h("tr", {}, h("td", {}, h("a", { href: `/runs/${encodeURIComponent(d.name)}` }, d.name)),
        h("td", {}, badge(d.status)), h("td", {}, d.exchange), h("td", {}, d.defense), h("td", { class: "num" }, d["rounds-done"]),
        h("td", { class: "num" }, num(d["federated-accuracy"])), h("td", { class: "num" }, num(d["central-accuracy"])),
        h("td", { class: "num" }, seconds(d.elapsed))))) : null,
    list.comparisons.length ? [h("h2", {}, "Comparison folders"), h("ul", {}, list.comparisons.map((c) =>
      h("li", {}, h("a", { href: `/compare/${encodeURIComponent(c)}` }, c))))] : null,
  );
}

async function compareFolder(name) {
  const d = await api(`/api/compare/${encodeURIComponent(name)}`);
  const file = (f) => `/api/compare/${encodeURIComponent(name)}/files/${f}`;
  main(
    h("h1", {}, `Comparison ${name}`),
    h("p", {}, h("a", { href: file("results.csv"), download: "results.csv" }, "results.csv"), " · ",
      h("a", { href: file("report.md") }, "report.md")),
    h("div", { style: "overflow-x:auto" }, h("table", { id: "results" }, h("tr", {}, d.columns.map((c) => h("th", {}, c))),
      d.rows.map((r) => h("tr", {}, d.columns.map((c) => h("td", {}, r[c])))))),
    d.plots.map((p) => [h("h2", {}, p), h("img", { src: file(p), alt: p, style: "max-width:100%;background:#fff" })]),
  );
}

// ---- nodes page ----------------------------------------------------------------------------
// What the ClientApp reported of its last message (client/timing.py): seconds per stage.
// A stage a reply left out (imports already done, no worker) is not shown.
function stageText(e) {
  if (!e || typeof e["stage-handler"] !== "number") return "–";
  const s = (k) => `${e[k].toFixed(2)} s`;
  const opt = (k, label) => (typeof e[k] === "number" && e[k] > 0 ? `, ${label} ${s(k)}` : "");
  const worker = typeof e["stage-forward"] === "number"
    ? `; worker: forward ${s("stage-forward")}, ClientApp ${Math.round(e["forwarder-peak-rss-mb"])} MB` : "";
  return `start ${s("stage-startup")}${opt("stage-imports", "imports")}, setup ${s("stage-setup")}, work ${s("stage-handler")}; CPU ${s("cpu-seconds")}, ${Math.round(e["peak-rss-mb"])} MB${worker}`;
}

async function refreshNodes() {
  const params = new URLSearchParams(location.search);
  const d = await api(`/api/nodes${params.get("run") ? `?run=${encodeURIComponent(params.get("run"))}` : ""}`);
  showSuperlink(d.superlink, d["superlink-error"]);
  main(
    h("h1", {}, "Nodes"),
    d["superlink-error"] ? h("div", { class: "note" }, d["superlink-error"]) : null,
    !d.superlink ? h("div", { class: "note" }, "Started without --superlink: only the nodes seen in the run's replies are listed.") : null,
    h("p", { class: "muted" }, d.run ? `Last reply of each node in run ${d.run}.` : "No run yet."),
    d.nodes.length ? h("table", { id: "nodes" }, h("tr", {}, ["node", "status", "online since", "offline at", "last reply", "its cost on the node"].map((c) => h("th", {}, c))),
      d.nodes.map((n) => h("tr", {}, h("td", {}, n["node-id"]), h("td", {}, n.status || "–"), h("td", {}, n["online-at"] || "–"),
        h("td", {}, n["offline-at"] || "–"),
        h("td", {}, n["last-reply"] ? `round ${n["last-reply"].round} ${n["last-reply"].what}: ${n["last-reply"].outcome}${n["last-reply"].reason ? ` (${n["last-reply"].reason})` : ""}` : "–"),
        h("td", { class: "stages" }, stageText(n["last-reply"])))))
      : h("p", { class: "muted" }, "No nodes known."),
  );
}

// ---- start ---------------------------------------------------------------------------------
const PAGES = { runs: () => refreshRuns(true), run: refreshRun, compare: refreshCompare, nodes: refreshNodes };
const page = document.body.dataset.page;
document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page || (page === "run" && a.dataset.nav === "runs")));
PAGES[page]().catch((err) => main(h("div", { class: "error" }, err.message)));
if (page !== "compare") {
  setInterval(() => { if (!document.hidden) PAGES[page]().catch(() => {}); }, POLL_MS);
}
