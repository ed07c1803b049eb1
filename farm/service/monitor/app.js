// The farm's web monitor (issue 25): plain ES modules, no build step. It signs in with an API key
// (kept in this tab's sessionStorage), reads the /v1 API and follows GET /v1/events with fetch
// (EventSource cannot send the key), so progress and images appear without a reload.
const main = document.getElementById("main");
const live = document.getElementById("live");
let key = sessionStorage.getItem("farm-key");
let stream = null;
const listeners = new Set();

async function api(path, options = {}) {
  const answer = await fetch(path, { ...options, headers: { Authorization: `Bearer ${key}`, ...(options.headers || {}) } });
  if (!answer.ok) {
    let detail = answer.statusText;
    try { detail = (await answer.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return answer;
}
const json = async (path, options) => (await api(path, options)).json();
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

// -- the event stream: one per tab, resumed with Last-Event-ID after a drop ------------------------
async function follow() {
  let lastId = null;
  while (key) {
    try {
      const headers = { Accept: "text/event-stream", ...(lastId ? { "Last-Event-ID": lastId } : {}) };
      const answer = await api("/v1/events", { headers });
      live.textContent = "live";
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const fields = {};
          for (const line of block.split("\n")) {
            const at = line.indexOf(":");
            if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1).trimStart();
          }
          if (fields.id) {
            lastId = fields.id;
            const event = JSON.parse(fields.data);
            listeners.forEach((fn) => fn(event));
          }
        }
      }
    } catch (_) { /* dropped: reconnect below */ }
    live.textContent = "reconnecting";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// -- views ---------------------------------------------------------------------------------------
function progressRow(b) {
  const done = b.done ?? 0;
  return el("tr", { "data-batch": b.batch },
    el("td", {}, el("a", { href: `#/batch/${b.batch}` }, b.batch)),
    el("td", {}, b.model), el("td", {}, new Date(b.created_at).toLocaleString()),
    el("td", {}, el("progress", { max: String(b.jobs), value: String(done), "aria-label": `batch ${b.batch} progress` }),
      ` ${done}/${b.jobs}`),
    el("td", {}, Object.entries(b.counts || {}).filter(([, n]) => n).map(([s, n]) => `${s} ${n}`).join(", ")));
}

async function batchesView() {
  const rows = await json("/v1/batches?limit=50");
  const body = el("tbody");
  const table = el("table", { "aria-label": "Batches" },
    el("thead", {}, el("tr", {}, ...["Batch", "Model", "Created", "Progress", "States"].map((h) => el("th", { scope: "col" }, h)))), body);
  const details = await Promise.all(rows.map((r) => json(`/v1/batches/${r.batch || r.id}`)));
  details.forEach((b) => body.append(progressRow(b)));
  main.replaceChildren(el("h2", {}, "Batches"), table);
  return async (event) => {
    if (!event.batch) return;
    const b = await json(`/v1/batches/${event.batch}`);
    const old = body.querySelector(`tr[data-batch="${event.batch}"]`);
    if (old) old.replaceWith(progressRow(b)); else body.prepend(progressRow(b));
  };
}

function jobCard(job) {
  const figure = el("figure", { "data-job": String(job.id), "data-state": job.state });
  const caption = el("figcaption", {}, `#${job.index} seed ${job.seed} · ${job.steps} steps · cfg ${job.guidance} · ${job.state}`,
    el("br"), job.prompt || "");
  if (job.artifact || job.sha256) {
    const img = el("img", { alt: `job ${job.id}, seed ${job.seed}: ${job.prompt || ""}` });
    api(`/v1/jobs/${job.id}/image`).then((a) => a.blob()).then((b) => { img.src = URL.createObjectURL(b); });
    figure.append(img);
  }
  figure.append(caption);
  return figure;
}

async function batchView(id) {
  const summary = el("p", { role: "status", "aria-live": "polite" });
  const grid = el("div", { class: "grid", "aria-label": "Images" });
  const filter = el("select", { id: "state-filter" }, ...["all", "queued", "running", "succeeded", "failed", "cancelled"]
    .map((s) => el("option", { value: s }, s)));
  const message = el("p", { role: "alert", class: "error" });
  const sheet = el("img", { class: "sheet", alt: `contact sheet of batch ${id}`, hidden: "" });
  const refresh = async () => {
    const b = await json(`/v1/batches/${id}`);
    summary.replaceChildren(`${b.done}/${b.jobs} done · `, ...Object.entries(b.counts).filter(([, n]) => n).map(([s, n]) => `${s} ${n} `),
      el("progress", { max: String(b.jobs), value: String(b.done), "aria-label": "batch progress" }));
  };
  const load = async () => {
    const state = filter.value === "all" ? "" : `?state=${filter.value}`;
    const jobs = await json(`/v1/batches/${id}/jobs${state}`);
    grid.replaceChildren(...jobs.map(jobCard));
  };
  const act = (what) => async () => {
    try { await api(`/v1/batches/${id}/${what}${what === "cancel" ? "?running=true" : ""}`, { method: "POST" }); await refresh(); await load(); message.textContent = ""; } catch (e) { message.textContent = e.message; }
  };
  const showSheet = async () => {
    try { sheet.src = URL.createObjectURL(await (await api(`/v1/batches/${id}/sheet.png`)).blob()); sheet.hidden = false; } catch (e) { message.textContent = e.message; }
  };
  filter.addEventListener("change", load);
  main.replaceChildren(el("h2", {}, `Batch ${id}`), summary,
    el("div", {}, el("button", { type: "button", onclick: act("cancel") }, "Cancel batch"),
      el("button", { type: "button", onclick: act("retry") }, "Retry failed and cancelled"),
      el("button", { type: "button", onclick: showSheet }, "Contact sheet")),
    el("label", { for: "state-filter" }, "Show jobs"), filter, message, grid, sheet);
  await refresh();
  await load();
  return async (event) => {
    if (event.batch !== id) return;
    await refresh();
    if (event.type === "job.succeeded" && (filter.value === "all" || filter.value === "succeeded")) {
      if (grid.querySelector(`figure[data-job="${event.data.job}"]`)?.querySelector("img")) return;
      const job = await json(`/v1/jobs/${event.data.job}`);
      const card = jobCard(job);
      const old = grid.querySelector(`figure[data-job="${job.id}"]`);
      if (old) old.replaceWith(card); else grid.append(card);
    } else if (event.type !== "job.succeeded") { await load(); }
  };
}

async function submitView() {
  const form = el("form", { "aria-labelledby": "submit-title" },
    el("h2", { id: "submit-title" }, "New batch"),
    el("label", { for: "prompt" }, "Prompt"), el("textarea", { id: "prompt", name: "prompt", rows: "2", cols: "60", required: "" }),
    el("label", { for: "model" }, "Model"), el("input", { id: "model", name: "model", value: "tiny-sd" }),
    el("label", { for: "seeds" }, "Seeds"), el("input", { id: "seeds", name: "seeds", value: "1-4" }),
    el("button", { type: "submit" }, "Submit"), el("p", { role: "alert", class: "error" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      const made = await json("/v1/batches", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
      location.hash = `#/batch/${made.batch}`;
    } catch (err) { form.querySelector(".error").textContent = err.message; }
  });
  main.replaceChildren(form);
  return null;
}

async function workersView() {
  const rows = await json("/v1/workers");
  main.replaceChildren(el("h2", {}, "Workers"), el("table", { "aria-label": "Workers" },
    el("thead", {}, el("tr", {}, ...["Worker", "Device", "State", "Models", "Resident"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((w) => el("tr", {}, el("td", {}, w.name), el("td", {}, w.device), el("td", {}, w.state),
      el("td", {}, (w.models || []).join(", ")), el("td", {}, (w.resident_models || []).join(", ")))))));
  return null;
}

async function throughputView() {
  const draw = async () => {
    const rows = (await json("/v1/throughput?since=1h")).buckets;
    const most = Math.max(1, ...rows.map((r) => r.images));
    const w = 12;
    const svg = `<svg role="img" aria-label="images per minute, last hour" width="${rows.length * w}" height="120">` +
      rows.map((r, i) => `<rect x="${i * w}" y="${110 - (100 * r.images) / most}" width="${w - 2}" height="${(100 * r.images) / most}" fill="#2f7de1"><title>${r.start}: ${r.images}</title></rect>`).join("") + "</svg>";
    const figure = el("figure", {});
    figure.innerHTML = svg;
    figure.append(el("figcaption", {}, `images per minute over the last hour; peak ${most}, total ${rows.reduce((a, r) => a + r.images, 0)}`));
    main.replaceChildren(el("h2", {}, "Throughput"), figure);
  };
  await draw();
  let pending = null;
  return (event) => { if (event.type === "job.succeeded" && !pending) pending = setTimeout(() => { pending = null; draw(); }, 2000); };
}

async function route() {
  listeners.clear();
  const [, view, id] = (location.hash || "#/").split("/");
  try {
    const handler = view === "batch" ? await batchView(id) : view === "submit" ? await submitView()
      : view === "workers" ? await workersView() : view === "throughput" ? await throughputView() : await batchesView();
    if (handler) listeners.add(handler);
    main.querySelector("h2")?.setAttribute("tabindex", "-1");
    main.querySelector("h2")?.focus();
  } catch (e) { main.replaceChildren(el("p", { role: "alert", class: "error" }, e.message)); }
}

function signedIn() {
  document.getElementById("nav").hidden = false;
  window.addEventListener("hashchange", route);
  route();
  if (!stream) stream = follow();
}

document.getElementById("signout").addEventListener("click", () => { sessionStorage.removeItem("farm-key"); key = null; location.hash = ""; location.reload(); });
document.getElementById("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  key = document.getElementById("key").value.trim();
  try {
    await json("/v1/batches?limit=1");
    sessionStorage.setItem("farm-key", key);
    signedIn();
  } catch (err) { document.getElementById("signin-error").textContent = `Sign-in failed: ${err.message}`; key = null; }
});
if (key) signedIn();
