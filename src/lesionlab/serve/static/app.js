// The clinician page: pick or drop an image, add age/sex/site, POST /v1/predict, draw bars, heatmap, referral.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, photoUrl: null, options: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function fillSelect(select, values) {
  for (const v of values) {
    if (v === "unknown") continue; // "not given" already stands for it
    const opt = document.createElement("option");
    opt.value = v;
    opt.textContent = v;
    select.appendChild(opt);
  }
}

async function loadOptions() {
  try {
    const [opts, card] = await Promise.all([fetch("/v1/options").then((r) => r.json()),
                                            fetch("/v1/model").then((r) => r.json())]);
    state.options = opts;
    fillSelect($("sex"), opts.sexes);
    fillSelect($("site"), opts.sites);
    $("age").min = opts.age_range[0];
    $("age").max = opts.age_range[1];
    renderIntendedUse(card);
    renderWarnings(card.warnings);
    const metaNote = card.uses_metadata ? "uses age, sex and site" : "image only (age, sex and site are checked, not used)";
    $("model-line").textContent = `model ${card.model_id} (version ${card.model_version}, ${card.backend}); ${metaNote}`;
  } catch (err) {
    $("model-line").textContent = "could not reach the model service";
    showError(`Could not load the service options: ${err}`);
  }
}

// The card's own wording replaces the built-in statement, so page and model card cannot disagree.
function renderIntendedUse(card) {
  if (!card.intended_use) return;
  const box = $("intended-use");
  box.textContent = "";
  const head = document.createElement("strong");
  head.textContent = "Intended use and limits. ";
  box.append(head, card.intended_use + " ");
  if (card.known_limits && card.known_limits.length) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `Known limits (${card.known_limits.length})`;
    const list = document.createElement("ul");
    for (const text of card.known_limits) {
      const li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    }
    details.append(summary, list);
    box.appendChild(details);
  }
}

function setFile(file) {
  showError("");
  if (!file) return;
  state.file = file;
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(file);
  $("drop-text").textContent = `${file.name} (${Math.round(file.size / 1024)} kB) - tap to change`;
  $("drop").classList.add("has-file");
  $("submit").disabled = false;
}

function pct(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;
}

function renderBars(probabilities, topCodes) {
  const list = $("bars");
  list.textContent = "";
  const sorted = [...probabilities].sort((a, b) => b.probability - a.probability);
  for (const c of sorted) {
    const li = document.createElement("li");
    li.className = "bar" + (c.malignant ? " malignant" : "") + (topCodes.includes(c.code) ? " top" : "");
    li.dataset.code = c.code;
    li.innerHTML = `<span class="label"><b></b> <em></em> <span class="name"></span></span>
      <span class="track"><span class="fill"></span></span><span class="value"></span>`;
    li.querySelector("b").textContent = c.code;
    li.querySelector(".name").textContent = c.name;
    li.querySelector("em").textContent = c.malignant ? "malignant" : "";
    li.querySelector(".fill").style.width = `${Math.max(0.5, 100 * c.probability)}%`;
    li.querySelector(".value").textContent = pct(c.probability);
    li.setAttribute("aria-label", `${c.name}: ${pct(c.probability)}`);
    list.appendChild(li);
  }
}

function renderReferral(ref) {
  const box = $("referral");
  const source = ref.threshold_source === "validation" ? "fitted on validation data" : "default, not validated";
  box.className = "referral " + (ref.refer ? "refer" : "no-refer");
  box.textContent = (ref.refer ? "REFER: " : "No referral flag: ") +
    `malignant classes (${ref.malignant_classes.join(", ")}) together ${pct(ref.malignant_probability)}, ` +
    `threshold ${pct(ref.threshold)} (${source}).`;
}

// The model's own warnings (unfinished or synthetic training, checks never fitted): always on top, never hidden.
function renderWarnings(warnings) {
  const box = $("warnings");
  box.textContent = "";
  for (const text of warnings || []) {
    const p = document.createElement("p");
    p.textContent = text;
    box.appendChild(p);
  }
  box.hidden = !(warnings && warnings.length);
}

// Subgroups its evaluation flagged as less accurate that this patient belongs to: shown beside every verdict
// (an image that cannot be assessed gets none).
function renderCautions(cautions, verdict) {
  const box = $("cautions");
  box.textContent = "";
  for (const c of cautions || []) {
    const p = document.createElement("p");
    p.textContent = c.message;
    box.appendChild(p);
  }
  box.hidden = !(verdict && cautions && cautions.length);
}

// cannot_assess: no class, no bars, no referral; uncertain: the answer says the model abstains, above the bars.
function renderAssessment(data) {
  const a = data.assessment;
  const box = $("assessment");
  box.className = "assessment " + a.status.replace("_", "-");
  box.hidden = a.status === "assessed";
  box.textContent = "";
  if (a.status === "cannot_assess") {
    const head = document.createElement("strong");
    head.textContent = "Cannot assess: ";
    box.append(head, a.message.replace(/^cannot assess: /, "") + ". No class and no referral flag are given.");
  } else if (a.status === "uncertain") {
    const [first, second] = data.top;
    const head = document.createElement("strong");
    head.textContent = "Uncertain: the model abstains. ";
    box.append(head, `It cannot decide between ${first.name} (${pct(first.probability)}) and ${second.name} ` +
      `(${pct(second.probability)}); treat this as no answer and decide on the clinical picture.`);
  }
  const verdict = a.status !== "cannot_assess";
  $("referral").hidden = !verdict;
  $("bars-block").hidden = !verdict;
}

function render(data) {
  $("result").hidden = false;
  renderWarnings(data.warnings);
  renderAssessment(data);
  renderCautions(data.cautions, data.assessment.status !== "cannot_assess");
  if (data.assessment.status !== "cannot_assess") {
    renderReferral(data.referral);
    renderBars(data.probabilities, data.top.map((c) => c.code));
  }
  $("photo").src = state.photoUrl;
  const heat = $("heatmap");
  if (data.heatmap && data.assessment.status !== "cannot_assess") {
    heat.src = `data:image/png;base64,${data.heatmap.png_base64}`;
    heat.hidden = !$("overlay-toggle").checked;
    $("overlay-toggle-label").hidden = false;
    $("heatmap-note").textContent = `${data.heatmap.method} for "${data.heatmap.class}" (red = most influential).`;
  } else {
    heat.hidden = true;
    heat.removeAttribute("src");
    $("overlay-toggle-label").hidden = true;
    $("heatmap-note").textContent = "";
  }
  const t = data.timing_ms;
  const temp = data.temperature ? `temperature ${data.temperature.toFixed(2)}` : "no temperature scaling";
  const notes = (data.image.notes || []).length ? ` Image: ${data.image.notes.join("; ")}.` : "";
  $("details").textContent = `model ${data.model.id} ${data.model.version} (${data.model.backend}), ${temp}; ` +
    `${t.total.toFixed(0)} ms (model ${t.model.toFixed(0)} ms` +
    (t.explain !== undefined ? `, heatmap ${t.explain.toFixed(0)} ms). ` : "). ") +
    (data.metadata.used_by_model ? "Age, sex and site were used." : "Age, sex and site were not used by this model.") +
    notes;
  $("result").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if (!state.file) {
    showError("Choose an image first.");
    return;
  }
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  for (const key of ["age", "sex", "site"]) {
    const v = $(key).value.trim();
    if (v) form.append(key, v);
  }
  form.append("explain", $("explain").checked ? "true" : "false");
  $("submit").disabled = true;
  $("submit").textContent = "Analysing…";
  try {
    const resp = await fetch("/v1/predict", { method: "POST", body: form });
    const data = await resp.json();
    if (!resp.ok) {
      const e = data.error || {};
      showError(`${e.message || resp.statusText}` + (e.field ? ` (field: ${e.field})` : ""));
      return;
    }
    render(data);
  } catch (err) {
    showError(`The request failed: ${err}`);
  } finally {
    $("submit").disabled = false;
    $("submit").textContent = "Analyse";
  }
}

function init() {
  $("file").addEventListener("change", (e) => setFile(e.target.files[0]));
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
  $("overlay-toggle").addEventListener("change", (e) => {
    if ($("heatmap").getAttribute("src")) $("heatmap").hidden = !e.target.checked;
  });
  $("form").addEventListener("submit", submit);
  loadOptions();
}

init();
