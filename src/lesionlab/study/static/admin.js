// The admin's progress page: participants, answered / time-outs per arm, closing the study, the CSV export.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "lesionlab-study-admin";
let token = sessionStorage.getItem(KEY);
let timer = null;

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function call(method, path) {
  const resp = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try { message = (await resp.json()).error.message; } catch (_) { /* not JSON */ }
    if (resp.status === 401) { sessionStorage.removeItem(KEY); token = null; $("login").hidden = false; }
    throw new Error(message);
  }
  return resp;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function render(p) {
  $("summary").textContent = `${p.title} (${p.design}): ${p.participants.length} participants, ${p.started} started, `
    + `${p.finished} finished; ${p.closed ? `closed ${p.closed_at}` : "open"}`;
  const head = $("head"); head.innerHTML = "";
  const hr = document.createElement("tr");
  for (const h of ["participant", "label", "consent", "done", ...p.arms, "last answer", "finished"]) {
    const th = document.createElement("th"); th.textContent = h; hr.appendChild(th);
  }
  head.appendChild(hr);
  const body = $("rows"); body.innerHTML = "";
  for (const r of p.participants) {
    const tr = document.createElement("tr");
    cell(tr, r.participant); cell(tr, r.label); cell(tr, r.consented ? "yes" : "no"); cell(tr, `${r.done}/${r.total}`);
    for (const a of p.arms) cell(tr, `${r.arms[a].answered}/${r.arms[a].timed_out}`);
    cell(tr, r.last_answer || ""); cell(tr, r.finished ? "yes" : "no");
    body.appendChild(tr);
  }
  const foot = $("foot"); foot.innerHTML = "";
  const fr = document.createElement("tr");
  cell(fr, "total"); cell(fr, ""); cell(fr, ""); cell(fr, "");
  for (const a of p.arms) cell(fr, `${p.totals[a].answered}/${p.totals[a].timed_out} of ${p.totals[a].required}`);
  cell(fr, ""); cell(fr, String(p.finished));
  foot.appendChild(fr);
  $("close").disabled = p.closed;
}

async function refresh() {
  try {
    const p = await (await call("GET", "/api/admin/progress")).json();
    $("login").hidden = true;
    $("panel").hidden = false;
    showError("");
    render(p);
  } catch (err) { showError(err.message); }
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(KEY, token);
  refresh();
  if (!timer) timer = setInterval(refresh, 10000);
});

$("download").addEventListener("click", async () => {
  try {
    const blob = await (await call("GET", "/api/admin/export.csv")).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "answers.csv";
    a.click();
  } catch (err) { showError(err.message); }
});

$("close").addEventListener("click", async () => {
  if (!confirm("Close the study? No more answers will be accepted.")) return;
  try { await call("POST", "/api/admin/close"); refresh(); } catch (err) { showError(err.message); }
});

if (token) { refresh(); timer = setInterval(refresh, 10000); }
