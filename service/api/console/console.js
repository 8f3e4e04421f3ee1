"use strict";
// The console's pages. Every piece of data reaches the page through textContent (h() below),
// never as markup: a payload holding "<script>" shows as those characters.

const POLL_MS = 2000; // each open page asks at most once per this long
const FINAL = ["finished", "failed", "canceled"];
let session = { role: "full", csrf: "", auth: false, history: false, redis_search_limit: 0 };
let timer = null;
let samples = []; // without MongoDB: [time, finished + failed] per poll, for the chart

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(node, ...children) {
  // replaceChildren, with the absent (null, false) parts left out and nested lists flattened.
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || "HTTP " + status);
    this.status = status;
    this.code = error.code || "";
  }
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) { window.location.reload(); throw new ApiError(401, null); }
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function notify(message, isError) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.className = isError ? "notice error" : "notice";
  notice.hidden = !message;
}

function fail(error) { notify(error.code ? error.code + ": " + error.message : error.message, true); }

function badge(status) { return h("span", { class: "badge " + (status || "") }, status || "—"); }

function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function when(stamp) { return stamp ? new Date(stamp).toLocaleString() : "—"; }

function json(value) { return JSON.stringify(value, null, 2); }

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) search.set(k, v);
  const text = search.toString();
  return text ? "?" + text : "";
}

function isoOf(local) { return local ? new Date(local).toISOString() : ""; }

function poll(refresh) {
  const tick = async () => {
    if (!document.hidden) {
      try { await refresh(); } catch (error) { if (error.status !== 401) fail(error); }
    }
    timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

function page(title, ...children) {
  const main = document.getElementById("main");
  main.replaceChildren(h("h1", {}, title), ...children);
  return main;
}

function canAct() { return session.role === "full"; }

function actionButton(label, cls, handler) {
  return h("button", {
    type: "button", class: cls, disabled: !canAct(),
    title: canAct() ? null : "read-only key: actions are refused", onclick: handler,
  }, label);
}

// ---- Overview ---------------------------------------------------------------------------------

function tile(label, value, id) {
  return h("div", { class: "tile" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
}

function perMinute(queues) {
  // Rate of finished + failed per queue over the samples of the last minute.
  const rates = {};
  const now = Date.now();
  const recent = samples.filter((s) => now - s.at <= 60000);
  if (recent.length < 2) return rates;
  const first = recent[0], last = recent[recent.length - 1];
  const minutes = (last.at - first.at) / 60000;
  for (const q of queues) {
    const before = first.byQueue[q.name];
    if (before === undefined || minutes <= 0) continue;
    rates[q.name] = Math.max(0, (last.byQueue[q.name] - before) / minutes);
  }
  return rates;
}

function countsChart(now) {
  // Without MongoDB: per minute, the rise of finished + failed seen by this page's polls.
  const minutes = [];
  const end = Math.floor(now / 60000) * 60000 + 60000;
  for (let i = 0; i < 60; i++) minutes.push({ minute: end - (60 - i) * 60000, finished: 0, failed: 0 });
  for (let i = 1; i < samples.length; i++) {
    const index = Math.floor((samples[i].at - (end - 3600000)) / 60000);
    if (index < 0 || index >= 60) continue;
    minutes[index].finished += Math.max(0, samples[i].finished - samples[i - 1].finished);
    minutes[index].failed += Math.max(0, samples[i].failed - samples[i - 1].failed);
  }
  return minutes;
}

function drawChart(minutes) {
  const width = 960, height = 200, pad = 28;
  // An even top, at least 2: the middle line's label is a whole number.
  const top = 2 * Math.ceil(Math.max(2, ...minutes.map((m) => m.finished + m.failed)) / 2);
  const bar = (width - pad) / minutes.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  for (const fraction of [0, 0.5, 1]) {
    const y = height - pad - fraction * (height - 2 * pad);
    chart.append(svg("line", { x1: pad, x2: width, y1: y, y2: y, stroke: "#e3e6ec" }));
    const label = svg("text", { x: 0, y: y + 4, "font-size": 11, fill: "#6b7385" });
    label.textContent = String(Math.round(fraction * top));
    chart.append(label);
  }
  minutes.forEach((m, i) => {
    const x = pad + i * bar + 1;
    const scale = (height - 2 * pad) / top;
    const ok = m.finished * scale, bad = m.failed * scale;
    const base = height - pad;
    chart.append(svg("rect", { x, y: base - ok, width: bar - 2, height: ok, fill: "#51cf66", rx: 1 }));
    chart.append(svg("rect", { x, y: base - ok - bad, width: bar - 2, height: bad, fill: "#ff6b6b", rx: 1 }));
    if (i % 15 === 0) {
      const label = svg("text", { x, y: height - 8, "font-size": 11, fill: "#6b7385" });
      label.textContent = new Date(typeof m.minute === "number" ? m.minute : m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      chart.append(label);
    }
  });
  return chart;
}

function overviewPage() {
  const table = h("tbody", { id: "queues" });
  const chartBox = h("div", { class: "chart", id: "chart" });
  const source = h("span", { class: "muted", id: "chart-source" });
  page("Overview",
    h("div", { class: "tiles" },
      tile("Waiting", "…", "total-waiting"), tile("Running", "…", "total-running"),
      tile("Scheduled", "…", "total-scheduled"), tile("Failed (dead)", "…", "total-failed"),
      tile("Done / min", "…", "total-rate")),
    h("div", { class: "panel" }, h("h2", {}, "Finished and failed per minute, last hour ", source), chartBox,
      h("div", { class: "legend" },
        h("span", {}, h("span", { class: "swatch", "data-color": "ok" }), "finished"),
        h("span", {}, h("span", { class: "swatch", "data-color": "bad" }), "failed"))),
    h("div", { class: "panel" }, h("h2", {}, "Queues"),
      h("table", {},
        h("thead", {}, h("tr", {}, ["Queue", "Waiting", "Running", "Scheduled", "Failed", "Finished (kept)", "Done / min", "Oldest waiting", "Workers", ""]
          .map((name, i) => h("th", { class: i > 0 && i < 9 ? "num" : null }, name)))),
        table)));
  poll(async () => {
    const data = await api("GET", "/console/api/overview");
    const at = Date.now();
    const byQueue = {};
    let finished = 0, failed = 0;
    for (const q of data.queues) { byQueue[q.name] = q.finished + q.failed; finished += q.finished; failed += q.failed; }
    samples.push({ at, byQueue, finished, failed });
    samples = samples.filter((s) => at - s.at <= 3600000);
    const rates = perMinute(data.queues);
    const sum = (field) => data.queues.reduce((total, q) => total + q[field], 0);
    document.getElementById("total-waiting").textContent = sum("waiting");
    document.getElementById("total-running").textContent = sum("started");
    document.getElementById("total-scheduled").textContent = sum("scheduled");
    document.getElementById("total-failed").textContent = sum("failed");
    const rate = Object.values(rates).reduce((a, b) => a + b, 0);
    document.getElementById("total-rate").textContent = Object.keys(rates).length ? Math.round(rate) : "—";
    let minutes = data.chart;
    if (minutes) {
      source.textContent = "(from the MongoDB history)";
    } else {
      minutes = countsChart(at);
      source.textContent = "(no MongoDB history: counted from Redis while this page is open)";
    }
    if (data.chart_error) source.textContent = "(" + data.chart_error + ")";
    chartBox.replaceChildren(drawChart(minutes));
    table.replaceChildren(...data.queues.map((q) => h("tr", { "data-queue": q.name },
      h("td", {}, h("a", { href: "#/jobs" + query({ queue: q.name }) }, q.name)),
      h("td", { class: "num", "data-field": "waiting" }, q.waiting),
      h("td", { class: "num", "data-field": "started" }, q.started),
      h("td", { class: "num" }, q.scheduled),
      h("td", { class: "num" }, h("a", { href: "#/dead" + query({ queue: q.name }) }, q.failed)),
      h("td", { class: "num", "data-field": "finished" }, q.finished),
      h("td", { class: "num" }, rates[q.name] === undefined ? "—" : Math.round(rates[q.name])),
      h("td", { class: "num" }, age(q.oldest_age)),
      h("td", { class: "num" }, q.workers),
      h("td", {}, q.paused ? badge("paused") : ""))));
  });
}

// ---- Jobs -------------------------------------------------------------------------------------

function field(label, input) { return h("label", {}, label, input); }

function statusSelect(value) {
  return h("select", { name: "status" }, h("option", { value: "" }, "any status"),
    ["queued", "scheduled", "started", "finished", "failed", "canceled"].map((s) =>
      h("option", { value: s, selected: s === value }, s)));
}

function filtersFromHash() { return Object.fromEntries(new URLSearchParams(location.hash.split("?")[1] || "")); }

function jobsPage() {
  const given = filtersFromHash();
  const form = h("form", { class: "filters" },
    field("Job id", h("input", { name: "id", value: given.id || "", size: 26 })),
    field("Type", h("input", { name: "type", value: given.type || "" })),
    field("Status", statusSelect(given.status)),
    field("Queue", h("input", { name: "queue", value: given.queue || "" })),
    field("Since", h("input", { name: "since", type: "datetime-local", value: given.since || "" })),
    field("Until", h("input", { name: "until", type: "datetime-local", value: given.until || "" })),
    field("Error text", h("input", { name: "error", value: given.error || "" })),
    h("button", { type: "submit", class: "primary" }, "Search"));
  const limits = session.history
    ? "Searching the MongoDB job history."
    : `No MongoDB history (MONGODB_URI unset): searching Redis, at most the ${session.redis_search_limit} newest jobs of each queue and status; jobs past their result TTL are gone.`;
  const body = h("tbody", {});
  const more = h("button", { type: "button", hidden: true }, "Load more");
  page("Jobs", h("div", { class: "panel" }, form, h("p", { class: "muted" }, limits)),
    h("div", { class: "panel" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Id", "Type", "Queue", "Status", "Attempts", "Created", "Updated", "Error"].map((n) => h("th", {}, n)))), body), more));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form));
    if (values.id) { location.hash = "#/jobs/" + encodeURIComponent(values.id.trim()); return; }
    location.hash = "#/jobs" + query(values);
  });
  const params = { type: given.type, status: given.status, queue: given.queue, error: given.error,
    since: isoOf(given.since), until: isoOf(given.until) };
  const row = (job) => h("tr", {},
    h("td", { class: "mono" }, h("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, job.id)),
    h("td", {}, job.type), h("td", {}, job.queue), h("td", {}, badge(job.status)),
    h("td", { class: "num" }, job.attempts), h("td", {}, when(job.created_at)),
    h("td", {}, when(job.updated_at || job.ended_at || job.started_at)), h("td", { class: "error" }, job.error || ""));
  const load = async (cursor) => {
    try {
      const data = session.history
        ? await api("GET", "/jobs" + query({ ...params, limit: 50, cursor }))
        : await api("GET", "/console/api/jobs" + query(params));
      body.append(...data.jobs.map(row));
      if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No job matches.")));
      more.hidden = !data.next_cursor;
      more.onclick = () => load(data.next_cursor);
    } catch (error) { fail(error); }
  };
  load(undefined);
}

function timeline(job, detail) {
  const steps = [["published", job.created_at, ""]];
  if (job.events) {
    for (const e of job.events) steps.push([(e.event || "event") + (e.attempt ? " (attempt " + e.attempt + ")" : "") + (e.worker ? " on " + e.worker : ""), e.at, e.event]);
  } else {
    (detail ? detail.attempts : job.history || []).forEach((a, i) => {
      steps.push([`attempt ${i + 1} started` + (a.worker ? " on " + a.worker : ""), a.started_at, ""]);
      steps.push([`attempt ${i + 1}: ${a.outcome}`, a.ended_at, a.outcome === "finished" ? "finished" : "failed"]);
    });
    if (job.status === "started") steps.push(["running" + (job.worker ? " on " + job.worker : ""), job.started_at, ""]);
    if (FINAL.includes(job.status)) steps.push([job.status, job.ended_at, job.status]);
  }
  return h("ol", { class: "timeline" }, steps.map(([label, at, cls]) =>
    h("li", { class: cls || null }, h("strong", {}, label), " ", h("span", { class: "muted" }, when(at)))));
}

function jobPage(id) {
  const actions = h("div", { class: "actions" });
  const content = h("div", {});
  page("Job " + id, actions, content);
  let last = "";
  poll(async () => {
    const job = await api("GET", "/jobs/" + encodeURIComponent(id));
    let detail = null;
    try { detail = await api("GET", "/console/api/jobs/" + encodeURIComponent(id)); } catch (error) { if (error.status !== 404) throw error; }
    const shape = JSON.stringify([job, detail]);
    if (shape === last) return; // nothing changed: keep the page (and any selection) as it is
    last = shape;
    const cancelable = ["queued", "scheduled", "started"].includes(job.status);
    fill(actions, badge(job.status), cancelable ? actionButton("Cancel job", "danger", async () => {
      try {
        const answer = await api("POST", "/jobs/" + encodeURIComponent(id) + "/cancel");
        notify(answer.status === "canceled" ? "Job canceled." : "Cancel requested: the worker stops it.");
        last = "";
      } catch (error) { fail(error); }
    }) : null);
    const progress = job.progress;
    const pct = progress && typeof progress.percent === "number" ? progress.percent : (typeof progress === "number" ? progress : null);
    const facts = [["Type", job.type], ["Queue", job.queue], ["Status", badge(job.status)],
      ["Attempts", job.attempts], ["Retries left", job.retries_left], ["Crash count", job.crashes],
      ["Worker", job.worker || "—"], ["Trace id", (detail && detail.trace_id) || job.trace_id || "—"],
      ["Progress", progress === null || progress === undefined ? "—"
        : h("span", {}, pct === null ? "" : h("span", { class: "progress" }, h("span", { "data-width": pct })), " ", typeof progress === "object" ? JSON.stringify(progress) : String(progress))],
      ["Created", when(job.created_at)], ["Started", when(job.started_at)], ["Ended", when(job.ended_at)]];
    const attempts = detail ? detail.attempts : [];
    const errors = attempts.filter((a) => a.error);
    const payload = detail ? detail.payload : job.payload;
    fill(content,
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, h("h2", {}, "Details"), h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
        h("div", { class: "panel" }, h("h2", {}, "Timeline"), timeline(job, detail))),
      h("div", { class: "panel" }, h("h2", {}, "Payload"), h("pre", { id: "payload" }, payload === undefined ? "(not kept)" : json(payload))),
      job.result !== null && job.result !== undefined
        ? h("div", { class: "panel" }, h("h2", {}, "Result"), h("pre", { id: "result" }, json(job.result))) : null,
      job.error || errors.length
        ? h("div", { class: "panel" }, h("h2", {}, "Error"),
          errors.length ? errors.map((a, i) => [h("p", { class: "muted" }, `Attempt ${attempts.indexOf(a) + 1} (${a.outcome})`), h("pre", { class: "traceback" }, a.error)])
            : h("pre", { class: "traceback" }, job.error)) : null);
    for (const bar of content.querySelectorAll("[data-width]")) bar.style.width = Math.min(100, Number(bar.dataset.width)) + "%";
    if (FINAL.includes(job.status)) { clearTimeout(timer); timer = null; }
  });
}

// ---- Dead letters -----------------------------------------------------------------------------

function deadPage() {
  const given = filtersFromHash();
  const form = h("form", { class: "filters" },
    field("Type", h("input", { name: "type", value: given.type || "" })),
    field("Queue", h("input", { name: "queue", value: given.queue || "" })),
    field("Error text", h("input", { name: "error", value: given.error || "" })),
    field("Since", h("input", { name: "since", type: "datetime-local", value: given.since || "" })),
    field("Until", h("input", { name: "until", type: "datetime-local", value: given.until || "" })),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  const filters = { type: given.type, queue: given.queue, error: given.error, since: isoOf(given.since), until: isoOf(given.until) };
  const chosen = Object.fromEntries(Object.entries(filters).filter(([, v]) => v));
  const everything = Object.keys(chosen).length === 0;
  const bulk = h("div", { class: "actions", id: "bulk" });
  const body = h("tbody", {});
  page("Dead letters", h("div", { class: "panel" }, form, h("p", { class: "muted" },
    "Failed jobs, kept FAILURE_TTL after they fail. Bulk actions apply to every dead letter matching the filters" + (everything ? " (none set: all of them)." : ".")), bulk),
  h("div", { class: "panel" }, h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Type", "Queue", "Failed", "Attempts", "Crashes", "Error", ""].map((n) => h("th", {}, n)))), body)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "#/dead" + query(Object.fromEntries(new FormData(form)));
  });
  const scope = everything ? { all: true } : chosen;
  const dryRun = async () => {
    try {
      const answer = await api("POST", "/dead/retry", { dry_run: true, ...scope });
      const count = h("strong", { id: "dry-count" }, answer.count);
      bulk.replaceChildren(h("span", {}, count, " dead letter(s) match" + (answer.next_cursor ? " in the first part examined" : "") + "."),
        actionButton("Retry " + answer.count, "primary", async () => {
          try { const done = await api("POST", "/dead/retry", { dry_run: false, ...scope }); notify(done.count + " job(s) put back on their queues."); render(); } catch (error) { fail(error); }
        }),
        actionButton("Delete " + answer.count, "danger", async () => {
          if (!confirm("Delete " + answer.count + " dead letter(s) for good?")) return;
          try { const done = await api("DELETE", "/dead" + query(scope)); notify(done.count + " dead letter(s) deleted."); render(); } catch (error) { fail(error); }
        }));
    } catch (error) { fail(error); }
  };
  const render = async () => {
    bulk.replaceChildren(h("button", { type: "button", id: "dry-run", onclick: dryRun }, "Dry run: count matches"));
    try {
      const data = await api("GET", "/dead" + query({ ...chosen, limit: 100 }));
      body.replaceChildren(...data.jobs.map((job) => h("tr", { "data-id": job.id },
        h("td", { class: "mono" }, h("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, job.id)),
        h("td", {}, job.type), h("td", {}, job.queue), h("td", {}, when(job.failed_at)),
        h("td", { class: "num" }, job.attempts), h("td", { class: "num" }, job.crashes),
        h("td", { class: "error" }, job.error || job.reason || ""),
        h("td", { class: "actions" },
          actionButton("Retry", "", async () => {
            try { await api("POST", "/dead/" + encodeURIComponent(job.id) + "/retry"); notify("Job " + job.id + " is queued again."); render(); } catch (error) { fail(error); }
          }),
          actionButton("Delete", "danger", async () => {
            try { await api("DELETE", "/dead/" + encodeURIComponent(job.id)); notify("Dead letter " + job.id + " deleted."); render(); } catch (error) { fail(error); }
          })))));
      if (!data.jobs.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No dead letter matches.")));
    } catch (error) { fail(error); }
  };
  render();
}

// ---- Workers ----------------------------------------------------------------------------------

function workersPage() {
  const box = h("div", {});
  page("Workers", box);
  poll(async () => {
    const data = await api("GET", "/console/api/workers");
    const hosts = {};
    for (const w of data.workers) (hosts[w.host] = hosts[w.host] || []).push(w);
    const names = Object.keys(hosts).sort();
    if (!names.length) { box.replaceChildren(h("div", { class: "panel empty" }, "No worker is registered.")); return; }
    box.replaceChildren(...names.map((host) => {
      const procs = hosts[host];
      const busy = procs.reduce((t, w) => t + (w.busy || 0), 0), slots = procs.reduce((t, w) => t + (w.slots || 0), 0);
      return h("div", { class: "panel" }, h("h2", {}, "Container " + host + " ", h("span", { class: "muted" }, `${procs.length} process(es), ${busy}/${slots} slots busy`)),
        h("table", {}, h("thead", {}, h("tr", {}, ["Process", "Pid", "State", "Slots busy", "Queues", "Heartbeat", "Version", "Running jobs"].map((n) => h("th", {}, n)))),
          h("tbody", {}, procs.map((w) => h("tr", {},
            h("td", { class: "mono" }, w.name), h("td", {}, w.pid), h("td", {}, badge(w.state)),
            h("td", { class: "num" }, w.busy === null ? "—" : `${w.busy} / ${w.slots}`),
            h("td", {}, w.queues.join(", ")), h("td", {}, age(w.heartbeat_age) + " ago"), h("td", {}, w.version || "—"),
            h("td", { class: "mono" }, w.jobs.length ? w.jobs.map((id) => [h("a", { href: "#/jobs/" + encodeURIComponent(id) }, id), " "]) : "—"))))));
    }));
  });
}

// ---- Router -----------------------------------------------------------------------------------

function route() {
  if (timer) { clearTimeout(timer); timer = null; }
  notify("");
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/overview";
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === parts[0]);
  if (parts[0] === "jobs" && parts[1]) return jobPage(decodeURIComponent(parts[1]));
  if (parts[0] === "jobs") return jobsPage();
  if (parts[0] === "dead") return deadPage();
  if (parts[0] === "workers") return workersPage();
  return overviewPage();
}

async function start() {
  session = await api("GET", "/console/api/session");
  document.getElementById("role").textContent = session.auth ? (session.role === "read" ? "read-only key" : "full key") : "no API key set";
  const logout = document.getElementById("logout");
  logout.hidden = !session.auth;
  logout.addEventListener("click", async () => {
    await fetch("/console/logout", { method: "POST", credentials: "same-origin" });
    window.location.replace("/console");
  });
  window.addEventListener("hashchange", route);
  route();
}

start().catch(fail);
