// The participant page: one case at a time, the seven classes as large buttons (keys 1-7), a server-timed
// countdown, and in assisted arms the model's output beside the image. The token comes from the link's fragment
// (never sent to the server as part of a URL) and is kept in this browser, so closing and reopening resumes.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "lesionlab-study-token";
const st = { token: null, study: null, item: null, selected: null, management: null, shownAt: 0, timer: null,
             busy: false, blobs: [] };

function takeToken() {
  const fromHash = decodeURIComponent(location.hash.replace(/^#/, "")).trim();
  if (fromHash) {
    localStorage.setItem(KEY, fromHash);
    history.replaceState(null, "", location.pathname); // the token leaves the address bar and the history
    return fromHash;
  }
  return localStorage.getItem(KEY);
}

function show(name) {
  for (const el of document.querySelectorAll(".screen")) el.hidden = el.id !== `screen-${name}`;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error ? body.error.code : "http_error";
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: `Bearer ${st.token}` }, cache: "no-store" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, data);
  }
  return resp;
}

async function blobUrl(path) {
  const resp = await api("GET", path);
  const url = URL.createObjectURL(await resp.blob());
  st.blobs.push(url);
  return url;
}

function freeBlobs() {
  for (const url of st.blobs) URL.revokeObjectURL(url);
  st.blobs = [];
}

function handleFailure(err) {
  if (err instanceof ApiError) {
    if (err.code === "study_closed") { stopTimer(); show("closed"); return; }
    if (["invalid_token", "token_expired", "foreign_token", "missing_token"].includes(err.code)) {
      localStorage.removeItem(KEY);
      show("nolink");
    }
    if (err.code === "out_of_order" || err.code === "not_shown") { loadNext(); return; }
  }
  showError(`${err.message}`);
}

async function start() {
  st.token = takeToken();
  if (!st.token) { show("nolink"); return; }
  try {
    const state = await (await api("GET", "/api/state")).json();
    st.study = state.study;
    document.title = `${state.study.title} - lesionlab reader study`;
    $("title").innerHTML = "";
    $("title").append(state.study.title, " ");
    const sub = document.createElement("span"); sub.className = "sub"; sub.textContent = "reader study";
    $("title").append(sub);
    buildForm(state.study.form);
    if (state.phase === "finished") { show("finished"); return; }
    if (state.phase === "closed") { show("closed"); return; }
    if (state.phase === "consent") {
      $("instructions").textContent = state.study.instructions;
      $("consent-text").textContent = state.study.consent;
      $("limit-note").textContent = state.study.time_limit_s
        ? `Each image is shown for at most ${state.study.time_limit_s} seconds.` : "There is no time limit.";
      show("consent");
      return;
    }
    await loadNext();
  } catch (err) { handleFailure(err); }
}

function buildForm(form) {
  const box = $("answers");
  box.innerHTML = "";
  for (const c of form.classes) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "answer";
    b.dataset.code = c.code;
    b.dataset.testid = `answer-${c.code}`;
    b.setAttribute("data-testid", `answer-${c.code}`);
    const k = document.createElement("kbd"); k.textContent = c.key;
    const n = document.createElement("span"); n.textContent = c.name;
    b.append(k, n);
    b.addEventListener("click", () => choose(c.code));
    box.appendChild(b);
  }
  const extras = form.confidence || (form.management && form.management.length);
  $("extras").hidden = !extras;
  $("confidence-row").hidden = !form.confidence;
  $("management-row").hidden = !(form.management && form.management.length);
  const mg = $("management");
  mg.innerHTML = "";
  for (const [i, m] of (form.management || []).entries()) {
    const label = document.createElement("label");
    label.className = "check";
    const input = document.createElement("input");
    input.type = "radio"; input.name = "management"; input.value = m;
    input.setAttribute("data-testid", `management-${i}`);
    input.addEventListener("change", () => { st.management = m; updateSubmit(); });
    label.append(input, " ", m);
    mg.appendChild(label);
  }
}

function needsExtras() {
  const f = st.study.form;
  return f.confidence || (f.management && f.management.length);
}

function updateSubmit() {
  const f = st.study.form;
  const ok = st.selected && (!f.management || !f.management.length || st.management);
  $("submit").disabled = !ok || st.busy;
}

function choose(code) {
  if (st.busy || !st.item) return;
  st.selected = code;
  for (const b of document.querySelectorAll(".answer")) b.classList.toggle("chosen", b.dataset.code === code);
  if (!needsExtras()) { submit(false); return; }
  updateSubmit();
}

function stopTimer() {
  if (st.timer) clearInterval(st.timer);
  st.timer = null;
}

function startTimer(remaining) {
  stopTimer();
  const el = $("countdown");
  if (remaining === null || remaining === undefined) { el.textContent = "no time limit"; el.className = "countdown"; return; }
  const end = performance.now() + remaining * 1000;
  const tick = () => {
    const left = Math.max(0, (end - performance.now()) / 1000);
    el.textContent = `${Math.ceil(left)} s`;
    el.className = left <= 10 ? "countdown low" : "countdown";
    if (left <= 0) { stopTimer(); submit(true); }
  };
  tick();
  st.timer = setInterval(tick, 200);
}

function renderSupport(support) {
  const box = $("support");
  box.hidden = !support;
  $("heatmap").hidden = true;
  if (!support) return;
  $("support-top").hidden = !support.top1;
  if (support.top1) $("support-top").textContent = `Most likely: ${support.top1.name}`;
  $("support-malignant").hidden = support.malignant === undefined;
  if (support.malignant !== undefined) {
    $("support-malignant").textContent = `Probability of a malignant lesion: ${(100 * support.malignant).toFixed(0)}%`;
  }
  const bars = $("support-bars");
  bars.innerHTML = "";
  bars.hidden = !support.probabilities;
  for (const p of support.probabilities || []) {
    const li = document.createElement("li");
    li.className = p.malignant ? "bar malignant" : "bar";
    const label = document.createElement("span"); label.className = "label"; label.textContent = p.name;
    const value = document.createElement("span"); value.className = "value";
    value.textContent = `${(100 * p.probability).toFixed(1)}%`;
    const track = document.createElement("span"); track.className = "track";
    const fill = document.createElement("span"); fill.className = "fill";
    fill.style.width = `${(100 * p.probability).toFixed(1)}%`;
    track.appendChild(fill);
    li.append(label, value, track);
    bars.appendChild(li);
  }
  $("heatmap-toggle-row").hidden = !support.heatmap;
}

function describeClinical(c) {
  if (!c) return "";
  const parts = [];
  parts.push(c.age === null || c.age === undefined ? "age not known" : `${Math.round(c.age)} years`);
  parts.push(c.sex && c.sex !== "unknown" ? c.sex : "sex not known");
  parts.push(c.site && c.site !== "unknown" ? c.site : "site not known");
  return parts.join(" · ");
}

async function loadNext(startSession) {
  stopTimer();
  st.item = null;
  st.busy = true;
  try {
    const body = startSession ? { start_session: startSession } : {};
    const item = await (await api("POST", "/api/next", body)).json();
    if (item.phase === "finished") { show("finished"); return; }
    if (item.phase === "break") { showBreak(item); return; }
    await showCase(item);
  } catch (err) { handleFailure(err); } finally { st.busy = false; updateSubmit(); }
}

function showBreak(item) {
  $("break-title").textContent = `Session ${item.session - 1} of ${item.sessions} finished`;
  const wait = item.available_in_s > 0
    ? ` Session ${item.session} opens in ${Math.ceil(item.available_in_s / 60)} minute(s); come back through your link.`
    : "";
  $("break-text").textContent = `Take a short break.${wait}`;
  $("break-go").disabled = item.available_in_s > 0;
  $("break-go").onclick = () => loadNext(item.session);
  show("break");
}

async function showCase(item) {
  const sameImage = st.lastItem === item.item; // revise: step 2 keeps the image on screen
  freeBlobsExceptPhoto(sameImage);
  st.selected = null; st.management = null;
  for (const b of document.querySelectorAll(".answer")) b.classList.remove("chosen");
  for (const r of document.querySelectorAll("input[name=management]")) r.checked = false;
  $("confidence").value = 50; $("confidence-value").textContent = "50";
  if (!sameImage) {
    $("photo").src = await blobUrl(item.image);
    await $("photo").decode().catch(() => {});
  }
  $("clinical").hidden = !item.clinical;
  $("clinical").textContent = describeClinical(item.clinical);
  renderSupport(item.support);
  if (item.support && item.support.heatmap) {
    $("heatmap").src = await blobUrl(item.support.heatmap);
    $("heatmap").hidden = !$("heatmap-toggle").checked;
  }
  const first = item.first_answer;
  $("first-answer").hidden = !first;
  if (first) {
    const name = first.answer ? st.study.form.classes.find((c) => c.code === first.answer).name : "no answer (time ran out)";
    $("first-answer").textContent = `Your first answer: ${name}. Now answer again, with the model's output.`;
  }
  // The progress line changes only once the case is on screen and can be answered.
  const sessionNote = item.sessions > 1 ? ` · session ${item.session} of ${item.sessions}` : "";
  const stepNote = item.steps > 1 ? (item.step === 1 ? " · your answer" : " · your answer with the model") : "";
  $("progress").textContent = `Case ${item.position} of ${item.session_total}${sessionNote}${stepNote}`;
  $("status").textContent = `${item.done} of ${item.total} answers given`;
  show("case");
  st.item = item;
  st.lastItem = item.item;
  st.shownAt = performance.now();
  startTimer(item.remaining_s);
}

function freeBlobsExceptPhoto(keepPhoto) {
  const photo = $("photo").src;
  for (const url of st.blobs) if (!(keepPhoto && url === photo)) URL.revokeObjectURL(url);
  st.blobs = keepPhoto ? st.blobs.filter((u) => u === photo) : [];
}

async function submit(timeout) {
  if (!st.item || st.busy) return;
  const item = st.item;
  const f = st.study.form;
  const body = { item: item.item, step: item.step, elapsed_ms: Math.round(performance.now() - st.shownAt),
                 timeout: !!timeout, answer: timeout ? null : st.selected };
  if (!timeout) {
    if (!st.selected) return;
    if (f.confidence) body.confidence = Number($("confidence").value);
    if (f.management && f.management.length) {
      if (!st.management) return;
      body.management = st.management;
    }
  }
  stopTimer();
  st.busy = true;
  updateSubmit();
  showError("");
  // Retry until the server confirms: the next image is requested only after that.
  for (let attempt = 0; ; attempt++) {
    try {
      await api("POST", "/api/answer", body);
      break;
    } catch (err) {
      if (err instanceof ApiError) { st.busy = false; handleFailure(err); return; }
      showError("Connection lost; retrying to save your answer...");
      await new Promise((r) => setTimeout(r, Math.min(5000, 500 * (attempt + 1))));
    }
  }
  showError("");
  st.busy = false;
  await loadNext();
}

document.addEventListener("keydown", (ev) => {
  if ($("screen-case").hidden || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  if (/^[1-7]$/.test(ev.key)) {
    const c = st.study.form.classes[Number(ev.key) - 1];
    if (c) { ev.preventDefault(); choose(c.code); }
  } else if (ev.key === "Enter" && !$("submit").disabled && needsExtras()) {
    ev.preventDefault();
    submit(false);
  }
});

$("consent-box").addEventListener("change", () => { $("consent-go").disabled = !$("consent-box").checked; });
$("consent-go").addEventListener("click", async () => {
  try {
    await api("POST", "/api/consent");
    await loadNext();
  } catch (err) { handleFailure(err); }
});
$("submit").addEventListener("click", () => submit(false));
$("confidence").addEventListener("input", () => { $("confidence-value").textContent = $("confidence").value; });
$("heatmap-toggle").addEventListener("change", () => { $("heatmap").hidden = !$("heatmap-toggle").checked; });
window.addEventListener("hashchange", () => { location.reload(); });

start();
