// The ops console: hash routes over the server's own HTTP API. No framework and no build step.
// Every URL is relative to the server's root, found from this page's path, so the console works
// behind a path prefix. The admin token lives in sessionStorage and goes only in a header.

const ROOT = location.pathname.replace(/\/ui\/?[^/]*$/, "");
const TOKEN_KEY = "imgserve.admin-token";
const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const notice = document.getElementById("notice");

// -- helpers ------------------------------------------------------------------------------------

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
const enc = encodeURIComponent;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, { body, auth = false, form } = {}) {
  const headers = { accept: "application/json" };
  if (auth) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new ApiError(0, "paste an admin token first (top right)");
    headers.authorization = `Bearer ${token}`;
  }
  let payload = form;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(ROOT + path, { method, headers, body: payload, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, `the server cannot be reached (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}
const get = (path) => call("GET", path);

function showNotice(message, kind = "error") {
  notice.textContent = message;
  notice.className = kind;
  notice.hidden = !message;
}

const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "");
const fmt = (x, digits = 4) => (typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toFixed(digits)) : esc(x ?? "—"));
function bytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KB`;
  return `${n} B`;
}
const ratio = (x) => (typeof x === "number" ? x.toFixed(4) : "—");
const scalarMetrics = (metrics) => Object.entries(metrics || {}).filter(([, v]) => typeof v === "number");
const modelPath = (name) => `/v1/models/${enc(name)}`;
const aliasList = (aliases) =>
  aliases.length ? aliases.map((a) => `<span class="tag">${esc(a)}</span>`).join(" ") : "";

function setCrumbs(parts) {
  crumbs.innerHTML = parts
    .map(([label, href]) => (href ? `<a href="${esc(href)}">${esc(label)}</a>` : `<span aria-current="page">${esc(label)}</span>`))
    .join(" › ");
}

// -- live figures from /metrics -----------------------------------------------------------------

// The server's own Prometheus text, read twice: rates and p99 come from the difference.
function parseMetrics(text) {
  const requests = {};
  const buckets = {};
  for (const line of text.split("\n")) {
    if (line.startsWith("model_requests_total{")) {
      const model = /model="([^"]*)"/.exec(line)?.[1];
      const code = /code="([^"]*)"/.exec(line)?.[1];
      const value = Number(line.slice(line.lastIndexOf(" ") + 1));
      requests[model] ??= {};
      requests[model][code] = (requests[model][code] ?? 0) + value;
    } else if (line.startsWith("model_request_duration_seconds_bucket{")) {
      const model = /model="([^"]*)"/.exec(line)?.[1];
      const le = /le="([^"]*)"/.exec(line)?.[1];
      const value = Number(line.slice(line.lastIndexOf(" ") + 1));
      buckets[model] ??= {};
      buckets[model][le] = (buckets[model][le] ?? 0) + value;
    }
  }
  return { at: performance.now(), requests, buckets };
}

function liveFigures(before, after, model) {
  const seconds = (after.at - before.at) / 1000;
  const sum = (m) => Object.values(m ?? {}).reduce((a, b) => a + b, 0);
  const req0 = before.requests[model] ?? {};
  const req1 = after.requests[model] ?? {};
  const total = sum(req1) - sum(req0);
  const errors = (req1["5xx"] ?? 0) - (req0["5xx"] ?? 0);
  let p99 = null;
  const b1 = after.buckets[model] ?? {};
  const b0 = before.buckets[model] ?? {};
  const bounds = Object.keys(b1).sort((a, b) => Number(a) - Number(b));
  const count = (b1["+Inf"] ?? 0) - (b0["+Inf"] ?? 0);
  if (count > 0) {
    const bound = bounds.find((le) => (b1[le] ?? 0) - (b0[le] ?? 0) >= 0.99 * count);
    p99 = bound === "+Inf" ? Infinity : Number(bound);
  }
  return { rate: total / seconds, errorRate: total ? errors / total : 0, p99, total };
}

let polling = 0; // a new page stops the previous page's polling by moving this on

function stopPolling() {
  polling += 1;
}

function pollLive(names) {
  const mine = polling;
  let previous = null;
  let ticks = 0;
  const tick = async () => {
    if (mine !== polling) return;
    try {
      const text = await (await fetch(ROOT + "/metrics", { cache: "no-store" })).text();
      const current = parseMetrics(text);
      for (const name of names) {
        const cell = document.querySelector(`[data-live="${CSS.escape(name)}"]`);
        if (!cell || mine !== polling) continue;
        if (!previous) {
          cell.textContent = "measuring…";
          continue;
        }
        const f = liveFigures(previous, current, name);
        const p99 = f.p99 === null ? "—" : f.p99 === Infinity ? "> 10 s" : `≤ ${f.p99 * 1000} ms`;
        cell.innerHTML = `<span class="num">${f.rate.toFixed(1)}/s</span> · p99 ${esc(p99)} · errors <span class="num">${(
          f.errorRate * 100
        ).toFixed(1)}%</span>`;
      }
      previous = current;
    } catch {
      // the figures are a bonus: the page stays as it is
    }
    if (mine === polling) setTimeout(tick, ticks++ === 0 ? 2000 : 5000);
  };
  setTimeout(tick, 0);
}

// -- pages ----------------------------------------------------------------------------------------

async function modelsPage() {
  setCrumbs([["Models"]]);
  const models = await get("/v1/models");
  const rows = models
    .map((m) => {
      const served = m.loaded.find((l) => l.version === m.serving_version);
      const aliases = Object.entries(m.aliases)
        .map(([alias, v]) => `<span class="tag">${esc(alias)}</span> → v${esc(v)}`)
        .join("<br>");
      return `<tr data-model="${esc(m.name)}">
        <th scope="row"><a href="#/models/${enc(m.name)}">${esc(m.name)}</a></th>
        <td>${aliases || '<span class="muted">none</span>'}</td>
        <td class="serving">${m.serving_version ? `v${esc(m.serving_version)}` : "—"} <span class="muted">(follows ${esc(m.alias)})</span></td>
        <td>${esc(served ? served.provider : "")}</td>
        <td data-live="${esc(m.name)}" class="live">…</td>
        <td class="${m.last_error ? "error" : "muted"}">${esc(m.last_error || "none")}</td>
      </tr>`;
    })
    .join("");
  main.innerHTML = `<h1>Models</h1>
    <table class="grid" id="models">
      <thead><tr><th scope="col">Model</th><th scope="col">Aliases</th><th scope="col">Served here</th>
      <th scope="col">Provider</th><th scope="col">Live: requests, p99, errors</th><th scope="col">Load error</th></tr></thead>
      <tbody>${rows || '<tr><td colspan="6">No models registered yet.</td></tr>'}</tbody>
    </table>`;
  pollLive(models.map((m) => m.name));
}

async function modelPage(name) {
  setCrumbs([["Models", "#/"], [name]]);
  const [served, versions] = await Promise.all([get(modelPath(name)), get(`${modelPath(name)}/versions`)]);
  versions.sort((a, b) => b.version - a.version);
  const metricNames = [...new Set(versions.flatMap((v) => scalarMetrics(v.metadata.metrics).map(([k]) => k)))].slice(0, 3);
  const rows = versions
    .map((v) => {
      const parity = v.metadata.parity;
      const archived = v.status === "archived";
      return `<div role="row" class="vrow${archived ? " archived" : ""}" data-version="${v.version}">
        <span role="cell"><input type="checkbox" class="pick" value="${v.version}" aria-label="select v${v.version} to compare"></span>
        <span role="rowheader"><a href="#/models/${enc(name)}/versions/${v.version}">v${v.version}</a></span>
        <span role="cell">${aliasList(v.aliases)}${v.version === served.serving_version ? ' <span class="tag served">served</span>' : ""}</span>
        ${metricNames.map((k) => `<span role="cell" class="num">${fmt(v.metadata.metrics[k])}</span>`).join("")}
        <span role="cell"><code title="${esc(v.metadata.dataset_fingerprint)}">${esc((v.metadata.dataset_fingerprint || "—").slice(0, 12))}</code></span>
        <span role="cell">${parity ? `${parity.passed ? "passed" : '<span class="error">failed</span>'} <span class="muted">${parity.max_abs_diff.toExponential(1)}</span>` : "—"}</span>
        <span role="cell" class="num">${bytes(v.size)}</span>
        <span role="cell">${esc(when(v.created_at))} <span class="muted">${esc(v.created_by)}</span></span>
        <span role="cell">${archived ? "archived" : "ready"}</span>
        <span role="cell" class="actions">${
          archived
            ? ""
            : `<button type="button" data-action="promote" data-version="${v.version}">Promote…</button>
               <button type="button" data-action="archive" data-version="${v.version}">Archive…</button>`
        }</span>
      </div>`;
    })
    .join("");
  const aliases = Object.keys(served.aliases);
  main.innerHTML = `<h1>${esc(name)}</h1>
    <p>Served here: <strong id="serving-version">${served.serving_version ? `v${served.serving_version}` : "none"}</strong>
      (follows <span class="tag">${esc(served.alias)}</span>)${served.last_error ? ` · <span class="error">${esc(served.last_error)}</span>` : ""}</p>
    <div class="toolbar">
      <button type="button" id="compare" disabled>Compare selected</button>
      <label for="rollback-alias">Roll back</label>
      <select id="rollback-alias">${aliases.map((a) => `<option>${esc(a)}</option>`).join("")}</select>
      <button type="button" id="rollback"${aliases.length ? "" : " disabled"}>Roll back…</button>
      <a href="#/models/${enc(name)}/history">History</a>
      <a href="#/models/${enc(name)}/try">Try it</a>
    </div>
    <div class="vtable m${metricNames.length}" id="versions" role="table" aria-label="Versions of ${esc(name)}">
      <div role="rowgroup"><div role="row" class="vrow head"><span role="columnheader"><span class="sr">Select</span></span>
      <span role="columnheader">Version</span><span role="columnheader">Aliases</span>
      ${metricNames.map((k) => `<span role="columnheader">${esc(k)}</span>`).join("")}
      <span role="columnheader">Dataset</span><span role="columnheader">Parity</span><span role="columnheader">Size</span>
      <span role="columnheader">Created</span><span role="columnheader">Status</span><span role="columnheader">Actions</span></div></div>
      <div role="rowgroup" class="rows">${rows}</div>
    </div>`;
  const picked = () => [...main.querySelectorAll(".pick:checked")].map((box) => Number(box.value));
  const compare = document.getElementById("compare");
  main.querySelector("#versions").addEventListener("change", () => {
    compare.disabled = picked().length !== 2;
  });
  compare.addEventListener("click", () => {
    const [a, b] = picked().sort((x, y) => x - y);
    location.hash = `#/models/${enc(name)}/compare/${a}/${b}`;
  });
  document.getElementById("rollback").addEventListener("click", () => rollbackFlow(name, served));
  main.querySelector("#versions .rows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const version = Number(button.dataset.version);
    if (button.dataset.action === "promote") promoteFlow(name, served, version);
    else archiveFlow(name, version);
  });
}

function metricsTable(metrics) {
  const rows = scalarMetrics(metrics)
    .map(([k, v]) => `<tr><th scope="row">${esc(k)}</th><td class="num">${fmt(v)}</td></tr>`)
    .join("");
  return rows ? `<table class="grid narrow">${rows}</table>` : '<p class="muted">No metrics recorded.</p>';
}

function confusionTable(matrix, labels) {
  if (!Array.isArray(matrix)) return '<p class="muted">No confusion matrix recorded.</p>';
  const head = labels.map((l) => `<th scope="col">${esc(l)}</th>`).join("");
  const body = matrix
    .map((row, i) => `<tr><th scope="row">${esc(labels[i])}</th>${row.map((n, j) => `<td class="num${i === j ? " diag" : ""}">${n}</td>`).join("")}</tr>`)
    .join("");
  return `<table class="grid confusion"><thead><tr><th scope="col">actual \\ predicted</th>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

async function versionPage(name, version) {
  setCrumbs([["Models", "#/"], [name, `#/models/${enc(name)}`], [`v${version}`]]);
  const v = await get(`${modelPath(name)}/versions`).then((all) => all.find((x) => x.version === version));
  if (!v) throw new ApiError(404, `${name} has no version ${version}`);
  const md = v.metadata;
  const labels = md.contract.labels;
  const perClass = md.metrics.per_class || {};
  const classRows = Object.entries(perClass)
    .map(([label, m]) => `<tr><th scope="row">${esc(label)}</th><td class="num">${ratio(m.precision)}</td><td class="num">${ratio(m.recall)}</td><td class="num">${fmt(m.support)}</td></tr>`)
    .join("");
  const images = v.extras
    .filter((e) => /\.(png|jpe?g|gif|webp)$/i.test(e.name))
    .map((e) => `<figure><img src="${ROOT}${modelPath(name)}/versions/${version}/extras/${enc(e.name)}" alt="${esc(e.name)} of v${version}"><figcaption>${esc(e.name)}</figcaption></figure>`)
    .join("");
  const files = v.extras
    .filter((e) => !/\.(png|jpe?g|gif|webp)$/i.test(e.name))
    .map((e) => `<li><a href="${ROOT}${modelPath(name)}/versions/${version}/extras/${enc(e.name)}">${esc(e.name)}</a> (${bytes(e.size)})</li>`)
    .join("");
  main.innerHTML = `<h1>${esc(name)} v${version} ${aliasList(v.aliases)}</h1>
    <p class="muted">${esc(md.description)}</p>
    <dl class="facts">
      <dt>Status</dt><dd>${esc(v.status)}</dd>
      <dt>Created</dt><dd>${esc(when(v.created_at))} by ${esc(v.created_by)}</dd>
      <dt>Size</dt><dd>${bytes(v.size)} · sha256 <code>${esc(v.sha256.slice(0, 16))}…</code></dd>
      <dt>Dataset</dt><dd><code>${esc(md.dataset_fingerprint || "—")}</code></dd>
      <dt>Parity</dt><dd>${md.parity ? `${md.parity.passed ? "passed" : "failed"}: max |Δ| ${md.parity.max_abs_diff.toExponential(2)}, top-1 agreement ${fmt(md.parity.top1_agreement)} over ${md.parity.samples} samples` : "—"}</dd>
      ${v.contract_change ? `<dt>Contract change</dt><dd>${esc(v.contract_change)}</dd>` : ""}
    </dl>
    <section><h2>Metrics</h2>${metricsTable(md.metrics)}</section>
    <section><h2>Per class</h2>${classRows ? `<table class="grid narrow"><thead><tr><th scope="col">class</th><th scope="col">precision</th><th scope="col">recall</th><th scope="col">support</th></tr></thead><tbody>${classRows}</tbody></table>` : '<p class="muted">Not recorded.</p>'}</section>
    <section><h2>Confusion matrix</h2>${confusionTable(md.metrics.confusion_matrix, labels)}</section>
    <section><h2>Training plots</h2>${images ? `<div class="figures">${images}</div>` : '<p class="muted">No plots stored with this version.</p>'}${files ? `<ul>${files}</ul>` : ""}</section>
    <section><h2>Contract</h2><pre>${esc(JSON.stringify(md.contract, null, 2))}</pre></section>
    <section><h2>Parameters</h2><pre>${esc(JSON.stringify(md.params, null, 2))}</pre></section>`;
}

function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = JSON.stringify(value);
  }
  return out;
}

async function comparePage(name, a, b) {
  setCrumbs([["Models", "#/"], [name, `#/models/${enc(name)}`], [`v${a} against v${b}`]]);
  const all = await get(`${modelPath(name)}/versions`);
  const [va, vb] = [a, b].map((n) => all.find((x) => x.version === n));
  if (!va || !vb) throw new ApiError(404, `${name} has no version ${!va ? a : b}`);
  const ma = va.metadata.metrics;
  const mb = vb.metadata.metrics;
  const keys = [...new Set([...scalarMetrics(ma), ...scalarMetrics(mb)].map(([k]) => k))];
  const delta = (x, y) => (typeof x === "number" && typeof y === "number" ? (y - x >= 0 ? "+" : "") + (y - x).toFixed(4) : "");
  const metricRows = keys
    .map((k) => `<tr><th scope="row">${esc(k)}</th><td class="num">${fmt(ma[k])}</td><td class="num">${fmt(mb[k])}</td><td class="num">${delta(ma[k], mb[k])}</td></tr>`)
    .join("");
  const labels = [...new Set([...Object.keys(ma.per_class || {}), ...Object.keys(mb.per_class || {})])];
  const pc = (m, label, key) => ratio(m.per_class?.[label]?.[key]);
  const classRows = labels
    .map((l) => `<tr><th scope="row">${esc(l)}</th><td class="num">${pc(ma, l, "precision")}</td><td class="num">${pc(mb, l, "precision")}</td><td class="num">${pc(ma, l, "recall")}</td><td class="num">${pc(mb, l, "recall")}</td></tr>`)
    .join("");
  const ca = flatten(va.metadata.contract);
  const cb = flatten(vb.metadata.contract);
  const diff = [...new Set([...Object.keys(ca), ...Object.keys(cb)])]
    .filter((k) => ca[k] !== cb[k])
    .map((k) => `<tr><th scope="row"><code>${esc(k)}</code></th><td><code>${esc(ca[k] ?? "absent")}</code></td><td><code>${esc(cb[k] ?? "absent")}</code></td></tr>`)
    .join("");
  main.innerHTML = `<h1>${esc(name)}: v${a} against v${b}</h1>
    <section><h2>Metrics</h2><table class="grid narrow" id="compare-metrics"><thead><tr><th scope="col">metric</th><th scope="col">v${a}</th><th scope="col">v${b}</th><th scope="col">change</th></tr></thead><tbody>${metricRows}</tbody></table></section>
    <section><h2>Per class</h2>${classRows ? `<table class="grid narrow"><thead><tr><th scope="col">class</th><th scope="col">precision v${a}</th><th scope="col">precision v${b}</th><th scope="col">recall v${a}</th><th scope="col">recall v${b}</th></tr></thead><tbody>${classRows}</tbody></table>` : '<p class="muted">Not recorded.</p>'}</section>
    <section><h2>Confusion matrices</h2><div class="side"><div><h3>v${a}</h3>${confusionTable(ma.confusion_matrix, va.metadata.contract.labels)}</div><div><h3>v${b}</h3>${confusionTable(mb.confusion_matrix, vb.metadata.contract.labels)}</div></div></section>
    <section><h2>Contract</h2><div id="contract-diff">${diff ? `<table class="grid"><thead><tr><th scope="col">field</th><th scope="col">v${a}</th><th scope="col">v${b}</th></tr></thead><tbody>${diff}</tbody></table>` : "<p>The same contract: either version takes the same requests.</p>"}</div></section>`;
}

const ACTIONS = { promote: "promoted", rollback: "rolled back", remove: "removed", archive: "archived" };

async function historyPage(name) {
  setCrumbs([["Models", "#/"], [name, `#/models/${enc(name)}`], ["History"]]);
  const moves = await get(`${modelPath(name)}/history`);
  const items = moves
    .reverse()
    .map((m) => {
      const what =
        m.action === "archive"
          ? `v${m.from_version} archived`
          : `<span class="tag">${esc(m.alias)}</span> ${ACTIONS[m.action] ?? esc(m.action)}: ${m.from_version ? `v${m.from_version}` : "none"} → ${m.to_version ? `v${m.to_version}` : "none"}`;
      return `<li class="move ${esc(m.action)}"><time datetime="${esc(m.created_at)}">${esc(when(m.created_at))}</time>
        <div><strong>${what}</strong> by <span class="actor">${esc(m.actor)}</span>${m.checked === false ? ' <span class="error">(unchecked)</span>' : ""}
        <div class="reason">${esc(m.reason) || '<span class="muted">no reason given</span>'}</div></div></li>`;
    })
    .join("");
  main.innerHTML = `<h1>${esc(name)}: history</h1><ol class="timeline" id="history">${items || "<li>Nothing has moved yet.</li>"}</ol>`;
}

async function tryPage(name) {
  setCrumbs([["Models", "#/"], [name, `#/models/${enc(name)}`], ["Try it"]]);
  const [served, versions] = await Promise.all([get(modelPath(name)), get(`${modelPath(name)}/versions`)]);
  const options = versions
    .filter((v) => v.status !== "archived")
    .sort((a, b) => b.version - a.version)
    .map((v) => `<option value="${v.version}">v${v.version}${v.aliases.length ? ` (${esc(v.aliases.join(", "))})` : ""}</option>`)
    .join("");
  main.innerHTML = `<h1>${esc(name)}: try it</h1>
    <form id="try-form" class="try">
      <label class="drop" id="drop" for="try-file">Drop an image here, or choose one
        <input id="try-file" type="file" accept="image/*"></label>
      <label for="try-version">Model version</label>
      <select id="try-version"><option value="">the served version (${served.serving_version ? `v${served.serving_version}` : "none"})</option>${options}</select>
      <button type="submit" class="primary">Classify</button>
    </form>
    <div id="try-result" aria-live="polite"></div>`;
  const file = document.getElementById("try-file");
  const drop = document.getElementById("drop");
  let chosen = null;
  const choose = (f) => {
    chosen = f;
    drop.dataset.file = f ? f.name : "";
  };
  file.addEventListener("change", () => choose(file.files[0] || null));
  drop.addEventListener("dragover", (e) => e.preventDefault());
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    choose(e.dataTransfer.files[0] || null);
  });
  document.getElementById("try-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById("try-result");
    if (!chosen) {
      out.innerHTML = '<p class="error">Choose an image first.</p>';
      return;
    }
    const form = new FormData();
    form.append("images", chosen, chosen.name);
    const version = document.getElementById("try-version").value;
    const query = `?top_k=5${version ? `&version=${enc(version)}` : ""}`;
    out.innerHTML = '<p class="muted">Classifying…</p>';
    try {
      const result = await call("POST", `${modelPath(name)}/predict${query}`, { form });
      const rows = result.predictions[0].top_k
        .map((p, i) => `<tr${i === 0 ? ' class="top1"' : ""}><td>${i + 1}</td><th scope="row" class="label">${esc(p.label)}</th><td class="num">${p.score.toFixed(4)}</td></tr>`)
        .join("");
      out.innerHTML = `<p>Computed by <strong id="try-version-used">v${result.version}</strong></p>
        <table class="grid narrow" id="try-top"><thead><tr><th scope="col">rank</th><th scope="col">label</th><th scope="col">score</th></tr></thead><tbody>${rows}</tbody></table>`;
    } catch (err) {
      out.innerHTML = `<p class="error">${esc(err.message)}</p>`;
    }
  });
}

// -- actions: a confirmation that says what will change, then the admin API ----------------------

const dialog = document.getElementById("confirm");
let confirmAction = null;

function confirmFlow(title, bodyHtml, action) {
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").innerHTML = bodyHtml;
  document.getElementById("confirm-reason").value = "";
  const error = document.getElementById("confirm-error");
  error.hidden = true;
  confirmAction = action;
  dialog.showModal();
  document.getElementById("confirm-reason").focus();
}

document.getElementById("confirm-cancel").addEventListener("click", () => dialog.close());
document.getElementById("confirm-ok").addEventListener("click", async () => {
  const button = document.getElementById("confirm-ok");
  const error = document.getElementById("confirm-error");
  button.disabled = true;
  document.body.dataset.ready = ""; // the page changes once the action is done: not settled until then
  try {
    const message = await confirmAction(document.getElementById("confirm-reason").value);
    dialog.close();
    showNotice(message, "ok");
    await render();
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
    document.body.dataset.ready = location.hash || "#/"; // refused: the page stays as it was
  } finally {
    button.disabled = false;
  }
});

function moveMessage(result, name) {
  const m = result.move;
  const served = result.unconfirmed
    ? `; recorded, but this server has not followed it yet (${result.unconfirmed}): it will once it can`
    : result.serving_version
      ? `; this server now serves v${result.serving_version}`
      : "";
  const failed = result.load_error ? ` (load error: ${result.load_error})` : "";
  return `${name}: ${m.alias} ${ACTIONS[m.action] ?? m.action} from ${m.from_version ? `v${m.from_version}` : "none"} to ${m.to_version ? `v${m.to_version}` : "none"}${served}${failed}`;
}

function promoteFlow(name, served, version) {
  const aliases = Object.keys(served.aliases);
  const current = (alias) => (served.aliases[alias] ? `v${served.aliases[alias]}` : "nothing");
  const body = `<p>Point an alias of <strong>${esc(name)}</strong> at <strong>v${version}</strong>.</p>
    <label for="promote-alias">Alias</label>
    <input id="promote-alias" list="promote-aliases" value="${esc(served.alias)}" pattern="[a-z][a-z0-9_-]*" required>
    <datalist id="promote-aliases">${aliases.map((a) => `<option value="${esc(a)}">`).join("")}</datalist>
    <p id="promote-change" class="change"></p>`;
  confirmFlow(`Promote ${name} v${version}`, body, async (reason) => {
    const alias = document.getElementById("promote-alias").value.trim();
    const result = await call("PUT", `${modelPath(name)}/aliases/${enc(alias)}`, { auth: true, body: { version, reason } });
    return moveMessage(result, name);
  });
  const input = document.getElementById("promote-alias");
  const change = () => {
    const alias = input.value.trim();
    document.getElementById("promote-change").textContent = `${alias}: ${current(alias)} → v${version}${
      alias === served.alias ? " (this server follows it and will serve v" + version + ")" : ""
    }`;
  };
  input.addEventListener("input", change);
  change();
}

async function rollbackFlow(name, served) {
  const alias = document.getElementById("rollback-alias").value;
  let target = "the version before";
  try {
    const moves = await get(`${modelPath(name)}/history?alias=${enc(alias)}`);
    const last = moves.filter((m) => m.action !== "archive").at(-1);
    if (last?.from_version) target = `v${last.from_version}`;
  } catch {
    // the confirmation still says what the alias points to now
  }
  const now = served.aliases[alias] ? `v${served.aliases[alias]}` : "nothing";
  confirmFlow(
    `Roll back ${alias}`,
    `<p class="change">${esc(name)} <span class="tag">${esc(alias)}</span>: ${now} → ${esc(target)}</p>`,
    async (reason) => moveMessage(await call("POST", `${modelPath(name)}/rollback`, { auth: true, body: { alias, reason } }), name),
  );
}

function archiveFlow(name, version) {
  confirmFlow(
    `Archive ${name} v${version}`,
    `<p class="change">v${version} will no longer be served or promoted. Its artifact stays in the registry.</p>`,
    async (reason) => {
      await call("POST", `${modelPath(name)}/versions/${version}/archive`, { auth: true, body: { reason } });
      return `${name} v${version} archived`;
    },
  );
}

// -- token ----------------------------------------------------------------------------------------

function showTokenState() {
  document.getElementById("token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "read-only";
}
document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const token = input.value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  input.value = "";
  showTokenState();
});
document.getElementById("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
});

// -- routing --------------------------------------------------------------------------------------

const ROUTES = [
  [/^#?\/?$/, () => modelsPage()],
  [/^#\/models\/([^/]+)$/, (n) => modelPage(n)],
  [/^#\/models\/([^/]+)\/versions\/(\d+)$/, (n, v) => versionPage(n, Number(v))],
  [/^#\/models\/([^/]+)\/compare\/(\d+)\/(\d+)$/, (n, a, b) => comparePage(n, Number(a), Number(b))],
  [/^#\/models\/([^/]+)\/history$/, (n) => historyPage(n)],
  [/^#\/models\/([^/]+)\/try$/, (n) => tryPage(n)],
];

async function render() {
  stopPolling();
  const started = performance.now();
  const hash = location.hash;
  const route = ROUTES.find(([pattern]) => pattern.test(hash));
  document.body.dataset.ready = "";
  try {
    if (!route) throw new ApiError(404, `no page ${hash}`);
    const args = route[0].exec(hash).slice(1).map(decodeURIComponent);
    await route[1](...args);
  } catch (err) {
    main.innerHTML = `<h1>Cannot show this page</h1><p class="error" id="page-error">${esc(err.message)}</p><p><a href="#/">All models</a></p>`;
  }
  document.body.dataset.ready = hash || "#/";
  document.body.dataset.renderMs = String(Math.round(performance.now() - started));
}

window.addEventListener("hashchange", () => {
  showNotice("");
  render().then(() => main.focus({ preventScroll: true }));
});
showTokenState();
render();
