// The bdia playground: edit an image through this server's /v1 API from the browser.
// Plain JavaScript, no build step, nothing loaded from elsewhere (see app/routes/playground.py).
"use strict";

(() => {
  const KEY_STORAGE = "bdia.apiKey";
  const TYPES = ["image/png", "image/jpeg", "image/webp"];
  const EVENTS = ["queued", "started", "progress", "cache_hit", "succeeded", "failed", "canceled"];
  const FINAL = new Set(["succeeded", "failed", "canceled"]);
  const POLL_MS = 800;
  const MASK_TINT = "rgba(255, 72, 140, 0.55)";

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

  const state = {
    models: [],
    file: null, // the upload, sent as it is
    bitmap: null, // the upload decoded (EXIF orientation applied)
    region: null, // the upload in upload pixels {x, y, w, h}: the model sees all of it, never a crop
    size: null, // the working size {width, height}
    mask: null, // the mask at the upload's size: white strokes on transparent
    running: null, // the id of the job being watched
    refresh: 0, // the timer that asks for the models again while a size is unknown
    edit: null, // the last succeeded edit job
    urls: { edit: null, recon: null },
  };

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(problem) {
      super(problem.detail || problem.title);
      this.problem = problem;
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
    return headers;
  }

  async function api(path, { method = "GET", json, form, accept = "application/json" } = {}) {
    const init = { method, headers: authHeaders({ Accept: `${accept}, application/problem+json` }) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers.set("Content-Type", "application/json");
    } else if (form) {
      init.body = form;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError({ title: "Network error", detail: `the server did not answer (${error.message})` });
    }
    if (!response.ok) throw new ApiError(await problemOf(response));
    return response;
  }

  async function problemOf(response) {
    let body = {};
    try {
      const type = response.headers.get("Content-Type") || "";
      body = type.includes("json") ? await response.json() : { detail: (await response.text()).slice(0, 300) };
    } catch {
      body = {};
    }
    return {
      status: response.status,
      title: body.title || response.statusText || "Error",
      detail: body.detail || "",
      code: body.code || "",
      errors: Array.isArray(body.errors) ? body.errors : [],
      retryAfter: response.headers.get("Retry-After"),
    };
  }

  const getJob = async (id) => (await api(`/v1/jobs/${encodeURIComponent(id)}`)).json();

  // Follow a job to its end: its events over SSE, then (or when streaming fails) polling.
  async function follow(job, ui) {
    state.running = job.id;
    ui.job(job);
    try {
      if (!FINAL.has(job.status)) await watch(job.id, ui);
      let current = await getJob(job.id);
      if (!FINAL.has(current.status)) ui.via("polling");
      while (!FINAL.has(current.status)) {
        ui.job(current);
        await sleep(POLL_MS);
        current = await getJob(job.id);
      }
      ui.job(current);
      return current;
    } finally {
      state.running = null;
    }
  }

  // Server-sent events. EventSource cannot send an Authorization header, so with a key the stream is
  // read with fetch. Resolves true after the final event, false when the stream gave out before it.
  function watch(id, ui) {
    const url = `/v1/jobs/${encodeURIComponent(id)}/events`;
    const deliver = (name, raw) => {
      let data = {};
      try {
        data = JSON.parse(raw);
      } catch {
        data = {};
      }
      ui.event(name, data);
      return FINAL.has(name);
    };
    if (!apiKey() && "EventSource" in window) {
      ui.via("eventsource");
      return new Promise((resolve) => {
        const source = new EventSource(url);
        let failures = 0;
        const listener = (message) => {
          failures = 0;
          if (deliver(message.type, message.data)) {
            source.close();
            resolve(true);
          }
        };
        for (const name of EVENTS) source.addEventListener(name, listener);
        source.onerror = () => {
          failures += 1;
          if (source.readyState === EventSource.CLOSED || failures > 3) {
            source.close();
            resolve(false);
          }
        };
      });
    }
    ui.via("stream");
    return readStream(url, deliver).catch(() => false);
  }

  async function readStream(url, deliver) {
    const response = await fetch(url, { headers: authHeaders({ Accept: "text/event-stream" }), cache: "no-store" });
    if (!response.ok || !response.body) return false;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let name = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (data.length && deliver(name, data.join("\n"))) {
            reader.cancel().catch(() => {});
            return true;
          }
          name = "message";
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
      }
    }
  }

  // ---------------------------------------------------------------- messages

  function showProblem(problem) {
    const box = $("problem");
    box.replaceChildren();
    const head = document.createElement("p");
    head.className = "problem-title";
    const title = document.createElement("strong");
    title.textContent = problem.status ? `${problem.title} (${problem.status})` : problem.title;
    head.append(title);
    if (problem.code) {
      const code = document.createElement("code");
      code.textContent = problem.code;
      head.append(" ", code);
    }
    box.append(head);
    if (problem.detail) {
      const detail = document.createElement("p");
      detail.textContent = problem.detail;
      box.append(detail);
    }
    if (problem.errors && problem.errors.length) {
      const list = document.createElement("ul");
      for (const error of problem.errors) {
        const item = document.createElement("li");
        const where = (error.loc || []).filter((part) => part !== "body").join(".");
        item.textContent = where ? `${where}: ${error.msg}` : error.msg;
        list.append(item);
      }
      box.append(list);
    }
    const hint = hintFor(problem);
    if (hint) {
      const note = document.createElement("p");
      note.className = "hint";
      note.textContent = hint;
      box.append(note);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "quiet close";
    close.textContent = "Dismiss";
    close.addEventListener("click", clearProblem);
    box.append(close);
    box.hidden = false;
    if (problem.status === 401) askForKey();
    else box.focus({ preventScroll: false });
  }

  function hintFor(problem) {
    if (problem.status === 401) return "Enter an API key above and try again.";
    if (problem.retryAfter) return `Try again in ${problem.retryAfter} s.`;
    return "";
  }

  function clearProblem() {
    $("problem").hidden = true;
    $("problem").replaceChildren();
  }

  function guard(action) {
    return async (...args) => {
      try {
        await action(...args);
      } catch (error) {
        if (error instanceof ApiError) showProblem(error.problem);
        else showProblem({ title: "Something went wrong", detail: String((error && error.message) || error) });
      }
    };
  }

  // ---------------------------------------------------------------- API key

  function askForKey() {
    $("auth").hidden = false;
    $("api-key").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      $("api-key").focus();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    $("api-key").placeholder = "a key is set for this tab";
    clearProblem();
    await loadModels();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    $("api-key").placeholder = "";
    $("api-key").focus();
  }

  // ---------------------------------------------------------------- models

  async function loadModels() {
    const body = await (await api("/v1/models")).json();
    state.models = body.models || [];
    const select = $("model");
    const previous = select.value;
    select.replaceChildren();
    for (const model of state.models) {
      const option = document.createElement("option");
      option.value = model.name;
      const size = model.width && model.height ? ` — ${model.width}×${model.height}` : "";
      option.textContent = `${model.name}${size}${model.available ? "" : " (no worker)"}`;
      select.append(option);
    }
    const keep = state.models.some((model) => model.name === previous);
    select.value = keep ? previous : body.default;
    if (!keep) applyDefaults();
    modelChanged();
    clearTimeout(state.refresh);
    if (state.models.some((model) => !model.width || !model.height)) {
      state.refresh = setTimeout(guard(loadModels), 5000); // a model's size is known once a worker is up
    }
  }

  const currentModel = () => state.models.find((model) => model.name === $("model").value) || null;

  function applyDefaults() {
    const defaults = (currentModel() || {}).defaults || {};
    if (defaults.steps != null) $("steps").value = defaults.steps;
    if (defaults.strength != null) $("strength").value = defaults.strength;
    if (defaults.guidance_scale != null) $("guidance").value = defaults.guidance_scale;
  }

  function modelChanged() {
    const model = currentModel();
    const note = $("model-note");
    if (!model) note.textContent = "";
    else if (!model.available) note.textContent = "no worker serves it now: jobs wait in the queue";
    else note.textContent = `${model.workers} worker${model.workers === 1 ? "" : "s"}`;
    layout();
  }

  // ---------------------------------------------------------------- the image

  // The size the worker edits an upload at (bdia.imaging.working_size): the upload's aspect ratio within
  // the model's pixel budget, each side a multiple of its size_multiple; a square upload gets the native size.
  function workingSize(model, width, height) {
    const step = model.size_multiple || 1;
    const budget = model.width * model.height;
    const target = Math.log(width / height);
    let best = null;
    for (let h = step; h <= Math.floor(budget / step); h += step) {
      const w = Math.floor(Math.floor(budget / h) / step) * step;
      if (w < step) break;
      const key = [Math.round(Math.abs(Math.log(w / h) - target) * 1e12) / 1e12, -w * h];
      if (!best || key[0] < best.key[0] || (key[0] === best.key[0] && key[1] < best.key[1])) {
        best = { key, width: w, height: h };
      }
    }
    return best ? { width: best.width, height: best.height } : { width: model.width, height: model.height };
  }

  // The upload upright per its EXIF orientation, as the worker reads it.
  async function decode(file) {
    try {
      return await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      return await createImageBitmap(file); // a browser that does not know the option (its default is upright)
    }
  }

  async function loadFile(file) {
    if (!file) return;
    clearProblem();
    if (file.type && !TYPES.includes(file.type)) {
      showProblem({ title: "Unsupported image", detail: `${file.name} is ${file.type}: choose a PNG, JPEG or WebP` });
      return;
    }
    let bitmap;
    try {
      bitmap = await decode(file);
    } catch {
      showProblem({ title: "Unreadable image", detail: `${file.name || "the file"} could not be decoded` });
      return;
    }
    if (state.bitmap) state.bitmap.close();
    state.file = file;
    state.bitmap = bitmap;
    state.mask = document.createElement("canvas");
    state.mask.width = bitmap.width;
    state.mask.height = bitmap.height;
    $("drop").hidden = true;
    $("stage-box").hidden = false;
    layout();
  }

  function layout() {
    if (!state.bitmap) return;
    const model = currentModel();
    const known = model && model.width && model.height;
    const upload = { width: state.bitmap.width, height: state.bitmap.height };
    const { width, height } = known ? workingSize(model, upload.width, upload.height) : upload;
    state.size = { width, height };
    state.region = { x: 0, y: 0, w: upload.width, h: upload.height };
    const preview = $("preview");
    preview.width = width;
    preview.height = height;
    const ctx = preview.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    const { x, y, w, h } = state.region;
    ctx.drawImage(state.bitmap, x, y, w, h, 0, 0, width, height);
    // The mask layer paints at a finer resolution than a small model's, for a smooth brush.
    const layer = $("mask-layer");
    const fine = Math.max(1, Math.ceil(512 / Math.max(width, height)));
    layer.width = width * fine;
    layer.height = height * fine;
    $("stage").style.aspectRatio = `${width} / ${height}`;
    const small = Math.max(width, height) < 256;
    for (const element of document.querySelectorAll(".pixels")) element.classList.toggle("pixelated", small);
    const shown = `${upload.width}×${upload.height}`;
    $("size-note").textContent = known
      ? `Working size ${width}×${height} (${model.name}); your ${shown} image is edited whole at that size and comes back at ${shown}.`
      : `${shown}; the model's working size is not known yet (no worker has reported it).`;
    drawMaskLayer();
  }

  // ---------------------------------------------------------------- the mask

  const maskOn = () => $("mask-on").checked;

  function drawMaskLayer() {
    const layer = $("mask-layer");
    const ctx = layer.getContext("2d");
    ctx.clearRect(0, 0, layer.width, layer.height);
    if (!maskOn() || !state.mask) return;
    const { x, y, w, h } = state.region;
    ctx.globalCompositeOperation = "source-over";
    ctx.drawImage(state.mask, x, y, w, h, 0, 0, layer.width, layer.height);
    ctx.globalCompositeOperation = "source-in";
    ctx.fillStyle = MASK_TINT;
    ctx.fillRect(0, 0, layer.width, layer.height);
    ctx.globalCompositeOperation = "source-over";
  }

  function toUpload(event) {
    const rect = $("mask-layer").getBoundingClientRect();
    const { x, y, w, h } = state.region;
    return {
      x: x + ((event.clientX - rect.left) / rect.width) * w,
      y: y + ((event.clientY - rect.top) / rect.height) * h,
    };
  }

  let stroke = null;

  function paint(from, to) {
    const ctx = state.mask.getContext("2d");
    const erase = document.querySelector('input[name="tool"]:checked').value === "erase";
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    const radius = (Number($("brush").value) / 100) * Math.min(state.region.w, state.region.h);
    ctx.lineWidth = 2 * radius;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (from) {
      ctx.moveTo(from.x, from.y);
      ctx.lineTo(to.x, to.y);
      ctx.stroke();
    } else {
      ctx.arc(to.x, to.y, radius, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.globalCompositeOperation = "source-over";
    drawMaskLayer();
  }

  function onPointerDown(event) {
    if (!maskOn() || !state.mask || event.button > 0) return;
    event.preventDefault();
    $("mask-layer").setPointerCapture(event.pointerId);
    stroke = toUpload(event);
    paint(null, stroke);
  }

  function onPointerMove(event) {
    if (!stroke) return;
    const point = toUpload(event);
    paint(stroke, point);
    stroke = point;
  }

  function onPointerUp() {
    stroke = null;
  }

  function maskAll(mode) {
    if (!state.mask) return;
    const ctx = state.mask.getContext("2d");
    const { width, height } = state.mask;
    if (mode === "none") {
      ctx.clearRect(0, 0, width, height);
    } else {
      ctx.globalCompositeOperation = mode === "invert" ? "xor" : "source-over";
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, width, height);
      ctx.globalCompositeOperation = "source-over";
    }
    drawMaskLayer();
  }

  function toggleMask() {
    const on = maskOn();
    $("mask-controls").hidden = !on;
    $("mask-note").hidden = !on;
    $("stage").classList.toggle("painting", on);
    drawMaskLayer();
  }

  // The mask as the model sees it, drawn into `canvas` (black = kept, white = may change);
  // returns whether anything may change.
  function maskAtModelSize(canvas) {
    const { width, height } = state.size;
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    const { x, y, w, h } = state.region;
    ctx.drawImage(state.mask, x, y, w, h, 0, 0, width, height);
    const pixels = ctx.getImageData(0, 0, width, height).data;
    for (let i = 0; i < pixels.length; i += 4) if (pixels[i] > 0) return true;
    return false;
  }

  // The mask file: the upload's size, white where the image may change, black elsewhere.
  function maskFile() {
    const canvas = document.createElement("canvas");
    canvas.width = state.mask.width;
    canvas.height = state.mask.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(state.mask, 0, 0);
    return new Promise((done, fail) =>
      canvas.toBlob((blob) => (blob ? done(blob) : fail(new Error("the mask could not be encoded"))), "image/png"),
    );
  }

  // ---------------------------------------------------------------- progress

  function progressUi(box) {
    const bar = box.querySelector("progress");
    const count = box.querySelector(".count");
    const status = box.querySelector(".status");
    let said = "";
    const say = (text) => {
      if (text !== said) status.textContent = said = text;
    };
    const stageName = (stage) => ({ invert: "Inverting", regenerate: "Regenerating" })[stage] || stage || "Running";
    const step = (progress) => {
      bar.max = progress.total || 1;
      bar.value = progress.step;
      const text = `${progress.step} / ${progress.total}`;
      count.textContent = text;
      bar.setAttribute("aria-valuetext", `${stageName(progress.stage)} ${text}`);
      say(`${stageName(progress.stage)}…`);
    };
    const waiting = (text) => {
      bar.removeAttribute("value");
      count.textContent = "";
      say(text);
    };
    return {
      via(transport) {
        box.dataset.via = transport; // how the job is being followed: eventsource, stream or polling
      },
      start(text) {
        box.hidden = false;
        box.classList.remove("failed");
        waiting(text);
      },
      event(name, data) {
        if (name === "queued") waiting(data.retry ? `Queued again (${data.reason || "retry"})` : "Queued");
        else if (name === "started") waiting(data.attempt > 1 ? `Started again (attempt ${data.attempt})` : "Started");
        else if (name === "cache_hit") say("Inversion found in the cache");
        else if (name === "progress") step(data);
      },
      job(job) {
        if (job.status === "queued") {
          waiting(job.queue_position ? `Queued: position ${job.queue_position}` : "Queued");
        } else if (job.status === "running") {
          if (job.progress) step(job.progress);
          else waiting("Running");
        } else if (job.status === "succeeded") {
          bar.max = 1;
          bar.value = 1;
          count.textContent = "";
          bar.setAttribute("aria-valuetext", "done");
          const seconds = job.metrics && job.metrics.run_seconds;
          say(seconds != null ? `Done in ${seconds.toFixed(2)} s` : "Done");
        } else {
          bar.max = 1;
          bar.value = 0;
          count.textContent = "";
          box.classList.add("failed");
          say(job.status === "canceled" ? "Canceled" : "Failed");
        }
      },
    };
  }

  function failure(job) {
    if (job.status === "canceled") return null;
    const error = job.error || { code: "", detail: "" };
    return { title: `The ${job.kind} job failed`, code: error.code, detail: error.detail };
  }

  // ---------------------------------------------------------------- edit

  async function fetchImage(job, slot, img) {
    const blob = await (await api(`/v1/jobs/${encodeURIComponent(job.id)}/result`, { accept: "image/png" })).blob();
    if (state.urls[slot]) URL.revokeObjectURL(state.urls[slot]);
    state.urls[slot] = URL.createObjectURL(blob);
    await new Promise((done, fail) => {
      img.onload = done;
      img.onerror = () => fail(new Error("the result image could not be shown"));
      img.src = state.urls[slot];
    });
    img.dataset.job = job.id;
    return state.urls[slot];
  }

  function facts(list, rows) {
    list.replaceChildren();
    for (const [term, value, title] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (title) dd.title = title;
      const pair = document.createElement("div");
      pair.append(dt, dd);
      list.append(pair);
    }
  }

  const number = (value, digits = 2) => (typeof value === "number" ? value.toFixed(digits) : "—");

  function missing(control, detail) {
    showProblem({ title: "Missing input", detail });
    control.focus();
  }

  async function submitEdit(event) {
    event.preventDefault();
    clearProblem();
    if (state.running) return;
    if (!state.file) return missing($("image"), "Choose an image to edit first.");
    const prompt = $("edit-prompt").value.trim();
    if (!prompt) return missing($("edit-prompt"), "Type an edit prompt: what the image should show.");

    const form = new FormData();
    form.append("image", state.file, state.file.name || "image");
    form.append("source_prompt", $("source-prompt").value.trim());
    form.append("prompt", prompt);
    if ($("model").value) form.append("model", $("model").value);
    for (const [id, field] of [
      ["steps", "steps"],
      ["strength", "strength"],
      ["guidance", "guidance_scale"],
      ["edit-gamma", "edit_gamma"],
    ]) {
      const value = $(id).value.trim();
      if (value !== "") form.append(field, value);
    }
    const maskView = document.createElement("canvas");
    const masked = maskOn() && maskAtModelSize(maskView);
    if (masked) form.append("mask", await maskFile(), "mask.png");
    else paintWhite(maskView); // no mask: everything may change
    const sourceView = copyOf($("preview"));

    const ui = progressUi($("edit-progress"));
    const button = $("submit");
    button.disabled = true;
    $("reconstruct").disabled = true;
    ui.start("Uploading…");
    try {
      const job = await (await api("/v1/edits", { method: "POST", form })).json();
      $("cancel").hidden = false;
      const done = await follow(job, ui);
      if (done.status !== "succeeded") {
        const problem = failure(done);
        if (problem) showProblem(problem);
        return;
      }
      await fetchImage(done, "edit", $("out-edit"));
      copyOf(sourceView, $("out-source"));
      copyOf(maskView, $("out-mask"));
      $("mask-caption").textContent = masked ? "Mask (white may change)" : "No mask: all may change";
      showEdit(done);
    } catch (error) {
      ui.job({ status: "failed" });
      throw error;
    } finally {
      button.disabled = false;
      $("cancel").hidden = true;
      $("reconstruct").disabled = false;
    }
  }

  function copyOf(canvas, into = document.createElement("canvas")) {
    into.width = canvas.width;
    into.height = canvas.height;
    into.getContext("2d").drawImage(canvas, 0, 0);
    return into;
  }

  function paintWhite(canvas) {
    canvas.width = state.size.width;
    canvas.height = state.size.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }

  function showEdit(job) {
    state.edit = job;
    const result = job.result || {};
    const metrics = job.metrics || {};
    const download = $("download");
    download.href = state.urls.edit;
    download.download = `bdia-edit-${job.id}.png`;
    facts($("edit-facts"), [
      ["Job", job.id],
      ["Inversion", job.inversion_id],
      ["Size", `${result.width}×${result.height}`],
      ["NFE", String(metrics.nfe ?? "—")],
      ["Inversion cached", metrics.inversion_cached ? "yes" : "no"],
      ["Run time", `${number(metrics.run_seconds)} s`],
    ]);
    $("recon-figure").hidden = true;
    $("roundtrip").hidden = true;
    $("recon-progress").hidden = true;
    $("results").hidden = false;
    $("results").scrollIntoView({ behavior: "smooth", block: "start" });
    $("results-title").focus({ preventScroll: true });
  }

  async function cancel() {
    if (state.running) await api(`/v1/jobs/${encodeURIComponent(state.running)}/cancel`, { method: "POST" });
  }

  // ---------------------------------------------------------------- reconstruct

  async function reconstruct() {
    if (!state.edit || state.running) return;
    clearProblem();
    const ui = progressUi($("recon-progress"));
    const button = $("reconstruct");
    button.disabled = true;
    $("submit").disabled = true;
    ui.start("Submitting…");
    try {
      const body = { inversion_id: state.edit.inversion_id };
      const job = await (await api("/v1/reconstructions", { method: "POST", json: body })).json();
      const done = await follow(job, ui);
      if (done.status !== "succeeded") {
        const problem = failure(done);
        if (problem) showProblem(problem);
        return;
      }
      await fetchImage(done, "recon", $("out-recon"));
      $("recon-figure").hidden = false;
      const result = done.result || {};
      const error = result.latent_max_abs_error;
      facts($("recon-facts"), [
        [
          "Latent max |error|",
          typeof error === "number" ? (error === 0 ? "0" : error.toExponential(3)) : "—",
          "the largest difference between the regenerated and the source latent",
        ],
        ["Exact", result.exact ? "yes: bit for bit" : "no"],
        [
          "PSNR",
          typeof result.psnr === "number" ? `${number(result.psnr)} dB` : "∞: identical pixels",
          "of the reconstruction against the upload fitted to the model's size (none reported: the pixels are " +
            "identical, or the upload has expired)",
        ],
        ["NFE", String((done.metrics || {}).nfe ?? "—")],
        ["Job", done.id],
      ]);
      $("roundtrip").hidden = false;
    } catch (error) {
      ui.job({ status: "failed" });
      throw error;
    } finally {
      button.disabled = false;
      $("submit").disabled = false;
    }
  }

  // ---------------------------------------------------------------- wiring

  function wireDrop(target) {
    target.addEventListener("dragover", (event) => {
      if (![...event.dataTransfer.types].includes("Files")) return;
      event.preventDefault();
      $("drop").classList.add("over");
    });
    target.addEventListener("dragleave", () => $("drop").classList.remove("over"));
    target.addEventListener("drop", (event) => {
      event.preventDefault();
      $("drop").classList.remove("over");
      guard(loadFile)(event.dataTransfer.files[0]);
    });
  }

  function init() {
    $("key-form").addEventListener("submit", guard(useKey));
    $("forget-key").addEventListener("click", forgetKey);
    if (apiKey()) {
      $("auth").hidden = false;
      $("api-key").placeholder = "a key is set for this tab";
    }
    $("model").addEventListener("change", () => {
      applyDefaults();
      modelChanged();
    });
    $("image").addEventListener("change", async (event) => {
      await guard(loadFile)(event.target.files[0]);
      event.target.value = ""; // choosing the same file again is a change too
    });
    $("replace").addEventListener("click", () => $("image").click());
    wireDrop($("drop"));
    wireDrop($("stage-box"));
    document.addEventListener("paste", (event) => {
      const file = [...(event.clipboardData || { files: [] }).files].find((f) => TYPES.includes(f.type));
      if (file) guard(loadFile)(file);
    });
    $("mask-on").addEventListener("change", toggleMask);
    $("mask-fill").addEventListener("click", () => maskAll("all"));
    $("mask-clear").addEventListener("click", () => maskAll("none"));
    $("mask-invert").addEventListener("click", () => maskAll("invert"));
    const layer = $("mask-layer");
    layer.addEventListener("pointerdown", onPointerDown);
    layer.addEventListener("pointermove", onPointerMove);
    layer.addEventListener("pointerup", onPointerUp);
    layer.addEventListener("pointercancel", onPointerUp);
    $("edit-form").addEventListener("submit", guard(submitEdit));
    $("cancel").addEventListener("click", guard(cancel));
    $("reconstruct").addEventListener("click", guard(reconstruct));
    guard(loadModels)();
  }

  init();
})();
