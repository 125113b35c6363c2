"use strict";
// The sd serve page: talks to the server's own API (/sdapi/v1 for lists, /v1/jobs for generating) and reads the
// job's Server-Sent Events through fetch, so an API key can go in the Authorization header.
const $ = (id) => document.getElementById(id);
let currentJob = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("apikey").value || localStorage.getItem("sd-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, options) {
  const o = Object.assign({}, options || {});
  o.headers = headers(o.headers);
  const r = await fetch(path, o);
  if (r.status === 401) {
    document.querySelector(".key").hidden = false;
    throw new Error("this server needs an API key: enter it and try again");
  }
  if (!r.ok) {
    let text = r.status + "";
    try { const e = await r.json(); text = e.error + ": " + e.detail; } catch (_) { /* not JSON */ }
    throw new Error(text);
  }
  return r;
}

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label || value;
  select.appendChild(o);
}

async function loadLists() {
  try {
    const [samplers, schedulers, models, loras, opts] = await Promise.all([
      "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/sd-models", "/sdapi/v1/loras", "/sdapi/v1/options",
    ].map((p) => api(p).then((r) => r.json())));
    samplers.forEach((s) => option($("sampler"), s.name));
    $("sampler").value = "Euler a";
    schedulers.forEach((s) => option($("scheduler"), s.name, s.label));
    models.forEach((m) => option($("model"), m.model_name, m.title));
    const current = models.find((m) => m.title === opts.sd_model_checkpoint || m.model_name === opts.sd_model_checkpoint);
    if (current) $("model").value = current.model_name;
    loras.forEach((l) => option($("lora"), l.name));
    const jobs = await api("/v1/jobs").then((r) => r.json());
    jobs.filter((j) => j.status === "done").forEach((j) => addToGallery(j));
    $("status").textContent = "ready";
  } catch (e) {
    $("error").textContent = e.message;
  }
}

function fileAsDataUrl(input) {
  const f = input.files && input.files[0];
  if (!f) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("cannot read " + f.name));
    reader.readAsDataURL(f);
  });
}

async function generate(event) {
  event.preventDefault();
  $("error").textContent = "";
  const key = $("apikey").value;
  if (key) localStorage.setItem("sd-api-key", key);
  let prompt = $("prompt").value;
  if ($("lora").value) prompt += ` <lora:${$("lora").value}:1>`;
  const body = {
    prompt, negative_prompt: $("negative").value,
    width: +$("width").value, height: +$("height").value, steps: +$("steps").value, cfg_scale: +$("cfg").value,
    sampler_name: $("sampler").value, scheduler: $("scheduler").value, seed: +$("seed").value, batch_size: +$("batch").value,
    model: $("model").value || undefined,
  };
  const init = await fileAsDataUrl($("init"));
  const mask = await fileAsDataUrl($("mask"));
  if (init) { body.init_images = [init]; body.denoising_strength = +$("strength").value; }
  if (mask) { body.mask = mask; body.inpainting_fill = 1; }
  $("generate").disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
      .then((r) => r.json());
    currentJob = job.id;
    $("cancel").disabled = false;
    $("progress").value = 0;
    $("progress-text").textContent = job.position > 0 ? `queued (${job.position} ahead)` : "starting";
    await follow(job.id);
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    currentJob = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

// Reads text/event-stream from fetch: "event: NAME\ndata: JSON\n\n" blocks.
async function follow(id) {
  const r = await api(`/v1/jobs/${id}/events`);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data) continue;
      const msg = JSON.parse(data);
      if (name === "progress") showProgress(msg);
      else if (name === "result") { showProgress({ step: msg.steps, total: msg.steps, eta_seconds: 0 }); addToGallery(msg); return; }
      else if (name === "error") { throw new Error(`${msg.error}: ${msg.detail}`); }
    }
  }
}

function showProgress(p) {
  if (p.total > 0) {
    $("progress").max = p.total;
    $("progress").value = p.step;
    $("progress-text").textContent = `step ${p.step}/${p.total}, ${p.eta_seconds.toFixed(1)} s left`;
  } else if (p.status === "queued") {
    $("progress-text").textContent = `queued (${p.position} ahead)`;
  }
  if (p.preview) { $("preview").src = p.preview; $("preview").hidden = false; }
}

async function addToGallery(job) {
  for (let i = 0; i < job.images; i++) {
    const figure = document.createElement("figure");
    figure.className = "result";
    const img = document.createElement("img");
    const link = document.createElement("a");
    const caption = document.createElement("figcaption");
    caption.textContent = job.infotexts ? job.infotexts[i] : "";
    try {
      const blob = await api(`/v1/jobs/${job.id}/images/${i}`).then((r) => r.blob());
      const url = URL.createObjectURL(blob);
      img.src = url;
      img.alt = caption.textContent;
      link.href = url;
      link.download = `sd-${job.id}-${i}.png`;
      link.textContent = "download PNG";
    } catch (e) {
      caption.textContent = e.message;
    }
    figure.append(img, link, caption);
    $("gallery").prepend(figure);
  }
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", () => {
  if (currentJob) api(`/v1/jobs/${currentJob}`, { method: "DELETE" }).catch((e) => { $("error").textContent = e.message; });
});
loadLists();
