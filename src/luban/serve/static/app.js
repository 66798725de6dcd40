// luban playground: lists the served models (GET /v1/models) and shows a panel for each thing a model can do.
// It uses only the public API (the same routes any client calls) and makes no request outside this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};

const keyInput = $("#api-key");
keyInput.value = sessionStorage.getItem("luban-api-key") || "";
let shownKey = null;  // the key the model list was loaded with: reload only when it changes
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("luban-api-key", keyInput.value);
  if (keyInput.value !== shownKey) init();
});

function headers(json = true) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  if (keyInput.value) h["authorization"] = "Bearer " + keyInput.value;
  return h;
}

async function api(path, body, opts = {}) {
  const init = { method: body === undefined ? "GET" : "POST", headers: headers(!(body instanceof FormData)), ...opts };
  if (body !== undefined) init.body = body instanceof FormData ? body : JSON.stringify(body);
  const r = await fetch(path, init);
  let data;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const msg = data && data.error ? data.error.message : (data && data.detail) || r.statusText;
    throw new Error(`${r.status}: ${msg}`);
  }
  return data;
}

function showError(box, err) {
  box.replaceChildren(el("p", { class: "error" }, String(err.message || err)));
}

// ---------------------------------------------------------------------------------------------- results

function bars(probs) {
  const grid = el("div", { class: "bars" });
  for (const [label, p] of Object.entries(probs)) {
    grid.append(el("span", {}, label),
                el("div", {}, el("div", { class: "bar", style: `width:${Math.max(0, Math.min(1, p)) * 100}%` })),
                el("span", { class: "num" }, (p * 100).toFixed(1) + "%"));
  }
  return grid;
}

function renderPrediction(p, title) {
  const box = el("div", { class: "result prediction" });
  if (title) box.append(el("div", { class: "muted" }, title));
  if (p && typeof p === "object") {
    if (p.label !== undefined) box.append(el("div", {}, el("span", { class: "label" }, p.label),
                                              p.score !== undefined ? ` (${(p.score * 100).toFixed(1)}%)` : ""));
    if (p.probabilities) box.append(bars(p.probabilities));
    if (p.value !== undefined) box.append(el("div", {}, "value: ", el("span", { class: "label" }, p.value)));
    if (p.text !== undefined) box.append(el("div", { class: "transcript" },
      p.text ? el("span", { class: "label" }, p.text) : el("span", { class: "muted" }, "(empty)")));
    if (p.items) box.append(itemList(p.items, p.strategy));
    if (p.entities) box.append(p.entities.length ? tagged(title || p.tokens.join(""), p.entities)
                                                 : el("div", { class: "muted" }, "(no entities)"));
    if (p.words) box.append(el("div", { class: "words" }, p.words.map(w => el("span", {}, w))));
    if (p.boxes) box.append(el("div", { class: "muted" }, `${p.boxes.length} box(es)`));
    if (p.label === undefined && p.value === undefined && p.text === undefined && !p.items && !p.boxes &&
        !p.entities && !p.words)
      box.append(el("pre", {}, JSON.stringify(p, null, 2)));
  } else {
    box.append(el("pre", {}, JSON.stringify(p, null, 2)));
  }
  return box;
}

function tagged(text, entities) {
  // the input text with each entity marked and its type beside it (offsets are characters of the text)
  const box = el("div", { class: "tagged" });
  let at = 0;
  entities.forEach((e, i) => {
    if (e.start > at) box.append(text.slice(at, e.start));
    box.append(el("mark", { "data-type": e.type, style: `--c:${COLORS[typeColor(e.type)]}` },
                  text.slice(e.start, e.end), el("sub", {}, e.type)));
    at = e.end;
  });
  box.append(text.slice(at));
  return box;
}

function typeColor(type) {
  let h = 0;
  for (const ch of type) h = (h * 31 + ch.charCodeAt(0)) % COLORS.length;
  return h;
}

function itemList(items, strategy) {
  const list = el("ol", { class: "items" });
  for (const it of items) list.append(el("li", {}, el("b", {}, it.item), ` ${Number(it.score).toFixed(4)}`));
  const box = el("div", {}, list);
  if (strategy) box.prepend(el("div", { class: "muted" }, "strategy: " + strategy));
  return box;
}

const COLORS = ["#e8453c", "#2f6fde", "#19a463", "#f2a007", "#8e44ad", "#e67e22"];

function drawImage(file, boxes) {
  // the uploaded image on a canvas, with the predicted boxes (original pixel coordinates) drawn over it
  const canvas = el("canvas", { class: "preview" });
  const img = new Image();
  img.onload = () => {
    const scale = Math.min(1, 480 / img.width);
    canvas.width = Math.round(img.width * scale);
    canvas.height = Math.round(img.height * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    ctx.lineWidth = 2;
    ctx.font = "13px sans-serif";
    (boxes || []).filter(b => b.score >= 0.3).forEach((b, i) => {
      const [x0, y0, x1, y1] = b.box.map(v => v * scale);
      ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.fillText(`${b.label} ${(b.score * 100).toFixed(0)}%`, x0 + 2, Math.max(12, y0 - 3));
    });
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
  return canvas;
}

// ---------------------------------------------------------------------------------------------- panels

function panel(kind, title, ...children) {
  return el("div", { class: "panel", "data-panel": kind }, el("h3", {}, title), ...children);
}

function textPanel(m) {
  const area = el("textarea", { placeholder: "one text per line", "aria-label": "texts" });
  area.value = (m.labels && m.labels.some(l => /[\u4e00-\u9fff]/.test(l))) ? "服务很好\n太失望了" : "";
  const out = el("div", { class: "out" });
  const go = el("button", { onclick: async () => {
    const inputs = area.value.split("\n").map(s => s.trim()).filter(Boolean);
    if (!inputs.length) return;
    go.disabled = true;
    try {
      const r = await api("v1/predict", { model: m.id, inputs });
      out.replaceChildren(...r.predictions.map((p, i) => renderPrediction(p, inputs[i])));
    } catch (e) { showError(out, e); } finally { go.disabled = false; }
  } }, "Predict");
  const buttons = el("div", { class: "row" }, go);
  if (m.capabilities && m.capabilities.explain) {
    const why = el("button", { class: "secondary", onclick: async () => {
      const inputs = area.value.split("\n").map(s => s.trim()).filter(Boolean).slice(0, 16);
      if (!inputs.length) return;
      why.disabled = true;
      try {
        const r = await api("v1/explain", { model: m.id, inputs });
        out.replaceChildren(...r.explanations.map(explained));
      } catch (e) { showError(out, e); } finally { why.disabled = false; }
    } }, "Explain");
    buttons.append(why);
  }
  return panel("text", "Text → prediction", area, buttons, out);
}

function explained(e) {
  // the text with each character shaded by its attribution: green toward the predicted class, red against it
  const box = el("div", { class: "result prediction" });
  box.append(el("div", {}, el("span", { class: "label" }, e.label), ` (${(e.score * 100).toFixed(1)}%)`));
  const peak = Math.max(1e-12, ...e.chars.map(Math.abs));
  const line = el("div", { class: "explained" });
  [...e.text].forEach((ch, i) => {
    const v = e.chars[i] || 0, a = Math.min(1, Math.abs(v) / peak) * 0.75;
    line.append(el("span", { title: v.toFixed(4),
                             style: `background:rgba(${v > 0 ? "10,123,52" : "179,38,30"},${a.toFixed(2)})` }, ch));
  });
  box.append(line, el("div", { class: "muted" }, e.method));
  return box;
}

function jsonPanel(m) {
  const area = el("textarea", { placeholder: 'a JSON list of inputs, e.g. [{"column": 1.5}] or ["user-1"]',
                                "aria-label": "JSON inputs" });
  const out = el("div", { class: "out" });
  const go = el("button", { onclick: async () => {
    let inputs;
    try { inputs = JSON.parse(area.value); } catch (e) { showError(out, new Error("not valid JSON: " + e.message)); return; }
    if (!Array.isArray(inputs)) inputs = [inputs];
    go.disabled = true;
    try {
      const r = await api("v1/predict", { model: m.id, inputs });
      out.replaceChildren(...r.predictions.map((p, i) => renderPrediction(p, `input ${i + 1}`)));
    } catch (e) { showError(out, e); } finally { go.disabled = false; }
  } }, "Predict");
  return panel("json", "JSON inputs → prediction", area, el("div", { class: "row" }, go), out);
}

function uploadPanel(m, kind) {
  const accept = kind === "image" ? "image/*" : "audio/*,.wav,.flac,.ogg";
  const files = el("input", { type: "file", multiple: "", accept, "aria-label": kind + " files" });
  const out = el("div", { class: "out" });
  const go = el("button", { onclick: async () => {
    if (!files.files.length) return;
    const form = new FormData();
    form.append("model", m.id);
    for (const f of files.files) form.append("files", f, f.name);
    go.disabled = true;
    try {
      const r = await api("v1/predict", form);
      out.replaceChildren(...r.predictions.map((p, i) => {
        const f = files.files[i];
        const box = renderPrediction(p, f.name);
        if (kind === "image") box.prepend(drawImage(f, p.boxes));
        else box.prepend(el("audio", { controls: "", src: URL.createObjectURL(f) }));
        return box;
      }));
    } catch (e) { showError(out, e); } finally { go.disabled = false; }
  } }, kind === "image" ? "Recognize" : "Transcribe");
  const title = kind === "image" ? "Image upload → labels / boxes" : "Audio upload → transcript / label";
  return panel(kind, title, el("div", { class: "row" }, files, go), out);
}

function slider(name, min, max, step, value) {
  const input = el("input", { type: "range", min, max, step, value, name });
  const shown = el("output", {}, value);
  input.addEventListener("input", () => { shown.textContent = input.value; });
  return { input, label: el("label", {}, name, input, shown) };
}

async function* sse(response) {
  // server-sent events from a fetch() response: yields each `data:` payload (JSON parsed), stops at [DONE]
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function citationList(citations) {
  // clickable sources: each opens to the cited text, with its file, page, character offsets and score
  const box = el("div", { class: "sources" });
  if (!citations.length) return box;
  box.append(el("div", { class: "sources-title" }, "Sources"));
  for (const c of citations) {
    const where = `${c.source}${c.page != null ? ` p.${c.page}` : ""} · chars ${c.start}–${c.end} · score ${c.score.toFixed(3)}`;
    box.append(el("details", { class: "source" + (c.cited ? " cited" : ""), "data-index": String(c.index) },
                  el("summary", {}, el("b", {}, `[${c.index}] `), where), el("blockquote", {}, c.text)));
  }
  return box;
}

function linkMarkers(reply, sources) {
  // [n] in the answer: a link that opens and shows source n
  const text = reply.textContent;
  reply.replaceChildren();
  let last = 0;
  for (const m of text.matchAll(/\[(\d+)\]/g)) {
    const target = sources.querySelector(`details[data-index="${m[1]}"]`);
    if (!target) continue;
    reply.append(text.slice(last, m.index));
    reply.append(el("a", { href: "#", class: "marker", onclick: e => { e.preventDefault(); target.open = true;
                                                                     target.scrollIntoView({ block: "nearest" }); } }, m[0]));
    last = m.index + m[0].length;
  }
  reply.append(text.slice(last));
}

function chatPanel(m) {
  const log = el("div", { class: "chat-log", "aria-live": "polite" });
  const area = el("textarea", { placeholder: "your message (Enter sends, Shift+Enter for a new line)",
                                "aria-label": "message" });
  // the sliders start at the run's own generation settings (GET v1/models: generation)
  const g = m.generation || {};
  const t = slider("temperature", 0, 2, 0.05, g.temperature ?? 0.8),
        k = slider("top_k", 0, Math.max(200, g.top_k || 0), 1, g.top_k ?? 0),
        p = slider("top_p", 0.05, 1, 0.05, g.top_p ?? 1),
        rp = slider("repetition_penalty", 0.5, 2, 0.05, g.repetition_penalty ?? 1),
        n = slider("max_tokens", 1, g.max_tokens_limit || 1024, 1, g.max_tokens ?? 200);
  const history = [];
  let controller = null;
  const stop = el("button", { class: "secondary", disabled: "", onclick: () => controller && controller.abort() }, "Stop");
  const clear = el("button", { class: "secondary", onclick: () => { history.length = 0; log.replaceChildren(); } }, "Clear");
  const send = el("button", { onclick: async () => {
    const text = area.value.trim();
    if (!text) return;
    area.value = "";
    history.push({ role: "user", content: text });
    log.append(el("div", { class: "msg user" }, text));
    const reply = el("span", { class: "reply" });
    const usage = el("div", { class: "usage" });
    log.append(el("div", { class: "msg assistant" }, reply, usage));
    send.disabled = true; stop.disabled = false;
    controller = new AbortController();
    try {
      const r = await fetch("v1/chat/completions", { method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model: m.id, messages: history, stream: true, stream_options: { include_usage: true },
                               temperature: +t.input.value, top_k: +k.input.value, top_p: +p.input.value,
                               repetition_penalty: +rp.input.value, max_tokens: +n.input.value }) });
      if (!r.ok) {
        const d = await r.json().catch(() => null);
        throw new Error(`${r.status}: ${d && d.error ? d.error.message : r.statusText}`);
      }
      let finish = null, sources = null;
      for await (const chunk of sse(r)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.citations) {  // luban serve --kb: the chunks the answer is grounded on
          const list = citationList(chunk.citations);
          if (sources) sources.replaceWith(list); else usage.before(list);
          sources = list;
        }
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) { reply.textContent += c.delta.content; log.scrollTop = log.scrollHeight; }
          if (c.finish_reason) finish = c.finish_reason;
        }
        if (chunk.usage) usage.textContent = `${chunk.usage.completion_tokens} tokens · finish: ${finish}`;
      }
      history.push({ role: "assistant", content: reply.textContent });
      if (sources) linkMarkers(reply, sources);
    } catch (e) {
      if (e.name === "AbortError") usage.textContent = "stopped";
      else usage.replaceChildren(el("span", { class: "error" }, e.message));
      history.push({ role: "assistant", content: reply.textContent });
    } finally { send.disabled = false; stop.disabled = true; controller = null; }
  } }, "Send");
  area.addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); } });
  return panel("chat", m.capabilities.chat ? "Chat (streaming)" : "Generate (streaming)", log, area,
               el("div", { class: "row sliders" }, t.label, k.label, p.label, rp.label, n.label),
               el("div", { class: "row" }, send, stop, clear));
}

function recommendPanel(m) {
  const user = el("input", { type: "text", placeholder: "user id", "aria-label": "user id" });
  const hist = el("input", { type: "text", placeholder: "recent items (optional, comma-separated)",
                             "aria-label": "history" });
  const k = el("input", { type: "number", min: 1, max: 100, value: 10, "aria-label": "k" });
  const item = el("input", { type: "text", placeholder: "item id", "aria-label": "item id" });
  const out = el("div", { class: "out" });
  const run = async body => {
    try {
      const r = await api("v1/recommend", { model: m.id, k: +k.value || null, ...body });
      out.replaceChildren(el("div", { class: "muted" }, r.user !== undefined ? `for user ${r.user}` : `like item ${r.item}`),
                          itemList(r.items, r.strategy));
    } catch (e) { showError(out, e); }
  };
  const rows = [];
  if (m.capabilities.recommend) rows.push(el("div", { class: "row" }, user, hist, "k", k,
    el("button", { onclick: () => user.value.trim() && run({ user: user.value.trim(),
      history: hist.value.trim() ? hist.value.split(",").map(s => s.trim()).filter(Boolean) : null }) }, "Recommend")));
  if (m.capabilities.similar_items) rows.push(el("div", { class: "row" }, item,
    el("button", { class: "secondary", onclick: () => item.value.trim() && run({ item: item.value.trim() }) }, "Similar items")));
  return panel("recommend", "Recommendations", ...rows, out);
}

function imagesPanel(m) {
  const n = el("input", { type: "number", min: 1, max: 64, value: 16, "aria-label": "how many" });
  const label = el("select", { "aria-label": "label" }, el("option", { value: "" }, "any label"),
                   ...(m.labels || []).map(l => el("option", { value: l }, l)));
  const seed = el("input", { type: "number", min: 0, placeholder: "random seed", "aria-label": "seed" });
  const out = el("div", { class: "out" });
  const go = el("button", { onclick: async () => {
    go.disabled = true;
    try {
      const body = { model: m.id, n: +n.value || 16 };
      if (label.value) body.label = label.value;
      if (seed.value !== "") body.seed = +seed.value;
      const r = await api("v1/images/generations", body);
      out.replaceChildren(el("div", { class: "muted" }, `seed ${r.seed}` +
                                     (r.mean_confidence != null ? ` · classifier confidence ${r.mean_confidence}` : "")),
        el("div", { class: "grid" }, ...r.data.map(d => el("figure", {},
          el("img", { src: "data:image/png;base64," + d.b64_json, alt: d.classifier_label || "" }),
          el("figcaption", {}, d.classifier_label || "")))));
    } catch (e) { showError(out, e); } finally { go.disabled = false; }
  } }, "Generate");
  return panel("images", "Generated images", el("div", { class: "row" }, "n", n, label, seed, go), out);
}

// ---------------------------------------------------------------------------------------------- page

function modelCard(m) {
  const card = $("#tpl-model").content.firstElementChild.cloneNode(true);
  card.id = "model-" + m.id;
  card.dataset.model = m.id;
  $(".name", card).textContent = m.id;
  $(".task", card).textContent = m.task + (m.model_type ? ` · ${m.model_type}` : "");
  const metrics = Object.entries(m.test_metrics || {}).slice(0, 3)
    .map(([k, v]) => `${k} ${typeof v === "number" ? +v.toFixed(4) : v}`).join(" · ");
  $(".meta", card).textContent = `backend ${m.backend}` + (metrics ? ` · test ${metrics}` : "");
  const c = m.capabilities, panels = $(".panels", card);
  m.labels = m.labels || null;
  if (c.generate_text) panels.append(chatPanel(m));
  else if (c.predict && c.inputs === "text") panels.append(textPanel(m));
  if (c.predict && c.inputs === "image") panels.append(uploadPanel(m, "image"));
  if (c.predict && c.inputs === "audio") panels.append(uploadPanel(m, "audio"));
  if (c.predict && (c.inputs === "json" || c.inputs === "unknown") && !c.recommend) panels.append(jsonPanel(m));
  if (c.recommend || c.similar_items) panels.append(recommendPanel(m));
  if (c.generate_images) panels.append(imagesPanel(m));
  return card;
}

async function init() {
  const status = $("#status"), err = $("#error");
  err.hidden = true;
  try {
    const ready = await fetch("readyz").then(r => r.json());
    status.textContent = ready.status;
    status.className = "status " + (ready.status === "ready" ? "ready" : ready.status === "failed" ? "down" : "");
    if (ready.status === "loading") { setTimeout(init, 1500); return; }
    const key = keyInput.value;
    const models = await api("v1/models");
    if (key !== keyInput.value) return;  // the key changed meanwhile: that call's init() draws the page
    shownKey = key;
    $("#models").replaceChildren(...models.data.map(modelCard));
    document.body.dataset.ready = "1";
  } catch (e) {
    err.textContent = e.message.startsWith("401") ? "This server needs an API key: enter it above." : e.message;
    err.hidden = false;
    status.textContent = "error";
    status.className = "status down";
  }
}

init();
