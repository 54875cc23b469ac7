// The playground: one form per capability, each calling its /v1 route with fetch.
// No framework and no build step: the service serves this file as it is.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);

const KEY_STORAGE = "lineage-api-key";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- talking to the API ------------------------------------------------------------------------------

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// FastAPI errors are {"detail": "..."} or, for validation, {"detail": [{loc, msg}, ...]};
// OpenAI-shaped routes answer {"error": {"message": ...}}.
function describeError(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => {
      const where = (e.loc || []).filter((part) => part !== "body").join(".");
      return where ? `${where}: ${e.msg}` : e.msg;
    }).join("; ");
  }
  if (body && body.error) return typeof body.error === "string" ? body.error : body.error.message;
  return `the service answered HTTP ${status}`;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: describeError falls back to the status
  }
  return new ApiError(response.status, describeError(body, response.status));
}

async function getJSON(path) {
  const response = await fetch(path, { headers: requestHeaders() });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

async function postJSON(path, payload) {
  const response = await fetch(path, { method: "POST", headers: requestHeaders(), body: JSON.stringify(payload) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// POST with stream:true and read the Server-Sent Events as they arrive: each event is a block of
// lines ended by a blank line; its `data:` lines carry JSON, and `[DONE]` is the last one before the
// service closes the stream.
async function postStream(path, payload, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST", headers: requestHeaders(), body: JSON.stringify({ ...payload, stream: true }), signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
      if (!data || data === "[DONE]") continue;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(null, `the stream ended early: ${describeError(event, response.status)}`);
      onEvent(event);
    }
  }
}

// ---- small DOM helpers -------------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

const percent = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;

// One row of a bar chart: a label, a bar as wide as the value, and the value written out.
function barRow(label, value, shown, highlight = false) {
  const width = `${Math.max(0, Math.min(1, value)) * 100}%`;
  return element("li", { class: highlight ? "best" : "" },
    element("span", { class: "bar-label", text: label }),
    element("span", { class: "bar-track", "aria-hidden": "true" },
      element("span", { class: "bar-fill", style: `width: ${width}` })),
    element("span", { class: "bar-value", text: shown }));
}

function words(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

// Every form runs the same way: mark it busy, clear its last error, run, then show the result or the
// error's detail in the alert box that follows it (clearing the form's data-results elements, so an old
// answer is never read as the new one). data-state lets a reader, or a test, see where it is.
function handle(form, run) {
  const box = form.nextElementSibling;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    box.hidden = true;
    box.textContent = "";
    form.dataset.state = "busy";
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      await run();
      form.dataset.state = "done";
    } catch (error) {
      form.dataset.state = "error";
      for (const id of (form.dataset.results || "").split(" ").filter(Boolean)) $(`#${id}`).replaceChildren();
      showError(box, error);
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
}

function showError(box, error) {
  const status = error instanceof ApiError ? error.status : null;
  const hints = {
    401: "Enter the service's API key at the top of the page.",
    429: "The service is at capacity; try again in a moment.",
    503: "This model is not loaded on the service.",
  };
  box.replaceChildren(
    element("strong", { text: status ? `Error ${status}` : "Error" }),
    element("span", { class: "detail", text: error.message }));
  if (hints[status]) box.append(element("span", { class: "hint", text: hints[status] }));
  box.hidden = false;
}

// ---- similar words -----------------------------------------------------------------------------------

handle($("#most-similar-form"), async () => {
  const body = await postJSON("/v1/word2vec/most-similar", {
    positive: words($("#w2v-positive").value),
    negative: words($("#w2v-negative").value),
    topn: Number($("#w2v-topn").value),
    model: $("#w2v-model").value,
  });
  $("#w2v-results").replaceChildren(...body.results.map((n, i) => barRow(n.word, n.score, n.score.toFixed(3), i === 0)));
});

handle($("#similarity-form"), async () => {
  const a = $("#sim-a").value.trim();
  const b = $("#sim-b").value.trim();
  const body = await postJSON("/v1/word2vec/similarity", { word_a: a, word_b: b, model: $("#w2v-model").value });
  $("#sim-result").replaceChildren("cos(", element("b", { text: a }), ", ", element("b", { text: b }), ") = ",
    element("output", { text: body.similarity.toFixed(3) }), element("span", { class: "meta", text: ` ${body.model}` }));
});

// ---- translation with its attention ------------------------------------------------------------------

// A sequential blue scale (ColorBrewer's "Blues"), evenly spaced over [0, 1]: a cell is as dark as the
// attention it got, and mid weights stay blue rather than grey.
const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];

function attentionColour(weight) {
  const x = Math.max(0, Math.min(1, weight)) * (BLUES.length - 1);
  const i = Math.min(Math.floor(x), BLUES.length - 2);
  const mix = BLUES[i].map((c, k) => Math.round(c + (BLUES[i + 1][k] - c) * (x - i)));
  return `rgb(${mix.join(",")})`;
}

function heatmap(result) {
  const { source_tokens: source, target_tokens: target, attention } = result;
  const vertical = source.some((token) => token.length > 2);
  const head = element("tr", {}, element("th", { scope: "col", class: "corner", text: "↓ output · input →" }),
    ...source.map((token) => element("th", { scope: "col", class: vertical ? "vertical" : "" }, element("span", { text: token }))));
  const rows = target.map((token, t) => element("tr", {}, element("th", { scope: "row", text: token }),
    ...attention[t].map((weight, s) => element("td", {
      title: `${token} ← ${source[s]}: ${weight.toFixed(3)}`,
      style: `background: ${attentionColour(weight)}`,
    }, element("span", { class: "sr-only", text: weight.toFixed(2) })))));
  const table = element("table", { class: "heatmap" },
    element("caption", { text: "Attention of each output token (rows) over the input tokens (columns)" }),
    element("thead", {}, head), element("tbody", {}, ...rows));
  const stops = [0, 0.25, 0.5, 0.75, 1].map((w) => `${attentionColour(w)} ${w * 100}%`);
  const legend = element("div", { class: "legend", "aria-hidden": "true" }, element("span", { text: "0" }),
    element("span", { class: "scale", style: `background: linear-gradient(to right, ${stops.join(", ")})` }),
    element("span", { text: "1" }));
  return [table, legend];
}

handle($("#translate-form"), async () => {
  const direction = $("#tr-direction").value;
  const body = await postJSON("/v1/translate", {
    text: $("#tr-text").value,
    direction,
    beam_size: Number($("#tr-beam").value),
  });
  const result = body.results[0];
  const chosen = direction === "auto" ? ` (${body.direction})` : "";
  $("#tr-result").replaceChildren(element("span", { class: "translated", text: result.translation || "(empty)" }),
    element("span", { class: "meta", text: ` ${body.model}${chosen}` }));
  if (result.unknown_tokens.length) {
    $("#tr-result").append(element("span", { class: "meta warn", text: ` · unknown: ${result.unknown_tokens.join(" ")}` }));
  }
  let unexplained = null;
  if (!result.attention) unexplained = "This model was trained without attention: there is no alignment to draw.";
  else if (!result.target_tokens.length) unexplained = "The model ended the translation at once: there is no alignment to draw.";
  $("#tr-heatmap").replaceChildren(...(unexplained ? [element("p", { class: "meta", text: unexplained })] : heatmap(result)));
});

// ---- fill-mask and next sentence ---------------------------------------------------------------------

$("#fm-insert").addEventListener("click", () => {
  const input = $("#fm-text");
  const start = input.selectionStart ?? input.value.length;
  const end = input.selectionEnd ?? start;
  input.setRangeText("[MASK]", start, end, "end");
  input.focus();
});

handle($("#fill-mask-form"), async () => {
  const body = await postJSON("/v1/fill-mask", { text: $("#fm-text").value, top_k: Number($("#fm-topk").value) });
  $("#fm-results").replaceChildren(...body.predictions.map((predictions, m) => element("div", { class: "mask" },
    element("h3", { text: body.predictions.length > 1 ? `[MASK] ${m + 1}` : "[MASK]" }),
    element("ol", { class: "bars", "aria-label": `Predictions for mask ${m + 1}` },
      ...predictions.map((p, i) => barRow(p.token_str, p.score, percent(p.score), i === 0))))));
});

handle($("#next-sentence-form"), async () => {
  const body = await postJSON("/v1/next-sentence", { text_a: $("#ns-a").value, text_b: $("#ns-b").value });
  const p = body.is_next_probability;
  $("#ns-result").replaceChildren("P(B follows A) = ", element("output", { text: percent(p) }),
    element("ol", { class: "bars inline" }, barRow("follows", p, "")));
});

// ---- streamed generation -----------------------------------------------------------------------------

let generation = null; // the AbortController of the stream in flight

handle($("#generate-form"), async () => {
  const output = $("#gen-output");
  const prompt = $("#gen-prompt").value;
  const generated = document.createTextNode("");
  output.replaceChildren(element("span", { class: "prompt", text: prompt }),
    element("span", { class: "generated" }, generated), element("span", { class: "caret", "aria-hidden": "true" }));
  output.dataset.state = "streaming";
  $("#gen-meta").textContent = "streaming…";
  generation = new AbortController();
  $("#gen-stop").disabled = false;
  const started = performance.now();
  try {
    await postStream("/v1/generate", {
      prompt,
      model: $("#gen-model").value,
      max_new_tokens: Number($("#gen-tokens").value),
      temperature: Number($("#gen-temperature").value),
      top_k: Number($("#gen-topk").value),
    }, (event) => {
      if (event.text) {
        generated.appendData(event.text);
        output.scrollTop = output.scrollHeight;
      }
      if (event.finish_reason) {
        const seconds = (performance.now() - started) / 1000;
        const tokens = event.usage.completion_tokens;
        $("#gen-meta").textContent = `${tokens} tokens in ${seconds.toFixed(1)} s · finished: ${event.finish_reason}`;
      }
    }, generation.signal);
    output.dataset.state = "done";
  } catch (error) {
    if (error.name !== "AbortError") {
      output.dataset.state = "error";
      $("#gen-meta").textContent = "";
      throw error;
    }
    output.dataset.state = "done";
    $("#gen-meta").textContent = "stopped";
  } finally {
    $("#gen-stop").disabled = true;
    generation = null;
  }
});

$("#gen-stop").addEventListener("click", () => generation && generation.abort());

// ---- classification ----------------------------------------------------------------------------------

handle($("#classify-form"), async () => {
  const body = await postJSON("/v1/classify", { text: $("#clf-text").value, model: $("#clf-model").value });
  const result = body.results[0];
  const ranked = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  $("#clf-label").replaceChildren("Label: ", element("output", { class: "label", text: result.label }),
    element("span", { class: "meta", text: ` ${body.model}` }));
  $("#clf-results").replaceChildren(...ranked.map(([label, p]) => barRow(label, p, percent(p), label === result.label)));
});

// ---- inside the attention: every layer and head, hover a token to see where it looks -------------------

// One colour per head (Tableau's ten), as in bertviz's head view: with all heads shown, each draws its own.
const HEAD_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];
const TOKEN_HEIGHT = 24; // pixels per token row: the lines between the columns are drawn at these heights
const LINE_GAP = 150; // pixels between the two columns of tokens

let attentionReply = null; // the last /v1/attention answer

// The attentions a reply holds, each with its queries (left column) and keys (right column).
function attentionKinds(body) {
  if (!body.cross_attention) {
    return { self: { label: "self-attention", queries: body.tokens, keys: body.tokens, maps: body.attention } };
  }
  return {
    encoder: { label: "encoder self-attention", queries: body.tokens, keys: body.tokens, maps: body.attention },
    decoder: { label: "decoder self-attention", queries: body.target_tokens, keys: body.decoder_tokens,
      maps: body.decoder_attention },
    cross: { label: "cross-attention (target → source)", queries: body.target_tokens, keys: body.tokens,
      maps: body.cross_attention },
  };
}

function fillOptions(select, options) {
  const current = select.value;
  select.replaceChildren(...options.map(([value, text]) => element("option", { value, text })));
  if (options.some(([value]) => value === current)) select.value = current;
}

function svgElement(tag, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

// The heads on show: one, or every head of the reply ("all").
function shownHeads() {
  const choice = $("#att-head").value;
  return choice === "all" ? attentionReply.heads.map((_, h) => h) : [Number(choice)];
}

function headColour(h) {
  return HEAD_COLOURS[attentionReply.heads[h] % HEAD_COLOURS.length];
}

// Lay out the chosen attention as two columns of tokens with the lines between them; hovering a token on
// the left highlights its attention (highlightAttention) without rebuilding the columns.
function drawAttention() {
  const kind = attentionKinds(attentionReply)[$("#att-kind").value];
  const heads = shownHeads();
  const rows = Math.max(kind.queries.length, kind.keys.length);
  const segment = (tokens, i) => (attentionReply.segment_ids && tokens === attentionReply.tokens
    ? ` segment-${attentionReply.segment_ids[i]}` : "");
  const column = (tokens, side, label) => element("ol", { class: `att-column att-${side}`, "aria-label": label },
    ...tokens.map((token, i) => element("li", { class: `att-token${segment(tokens, i)}`, "data-index": i, text: token })));
  const queries = column(kind.queries, "queries", "Tokens attending (hover one)");
  const keys = column(kind.keys, "keys", "Tokens attended to");
  const lines = svgElement("svg", { class: "att-lines", width: LINE_GAP, height: rows * TOKEN_HEIGHT,
    "aria-hidden": "true" });
  for (const item of queries.children) {
    item.addEventListener("mouseenter", () => highlightAttention(Number(item.dataset.index)));
  }
  queries.addEventListener("mouseleave", () => highlightAttention(null));
  const legend = heads.length > 1 ? element("p", { class: "meta att-legend" }, ...heads.map((h) => element("span",
    { class: "att-swatch", style: `--swatch: ${headColour(h)}`, text: `head ${attentionReply.heads[h]}` }))) : "";
  $("#att-view").replaceChildren(element("div", { class: "att-columns", style: `--token-height: ${TOKEN_HEIGHT}px` },
    queries, lines, keys), legend);
  highlightAttention(null);
}

// Show where token `query` of the left column looks (every token at once, lighter, for null): one line per
// head to each token on the right, as opaque as its weight, and the weights on the right-hand tokens.
function highlightAttention(query) {
  const kind = attentionKinds(attentionReply)[$("#att-kind").value];
  const layer = kind.maps[Number($("#att-layer").value)];
  const heads = shownHeads();
  const view = $("#att-view");
  const lines = $(".att-lines", view);
  const drawn = query === null ? kind.queries.map((_, q) => q) : [query];
  const faint = query === null ? 0.35 : 1;
  lines.replaceChildren(...drawn.flatMap((q) => heads.flatMap((h) => layer[h][q].flatMap((weight, k) => (
    weight < 0.01 ? [] : [svgElement("line", { x1: 2, y1: (q + 0.5) * TOKEN_HEIGHT, x2: LINE_GAP - 2,
      y2: (k + 0.5) * TOKEN_HEIGHT, stroke: headColour(h), "stroke-width": 2,
      "stroke-opacity": (weight * faint).toFixed(3) })])))));
  view.querySelectorAll(".att-queries li").forEach((item, q) => item.classList.toggle("active", q === query));
  view.querySelectorAll(".att-keys li").forEach((item, k) => {
    item.classList.remove("dark");
    if (query === null) {
      delete item.dataset.weights;
      item.removeAttribute("title");
      item.style.background = "";
      return;
    }
    const weights = heads.map((h) => layer[h][query][k]);
    item.dataset.weights = weights.join(",");
    item.title = heads.map((h, i) => `head ${attentionReply.heads[h]}: ${weights[i].toFixed(3)}`).join(" · ");
    item.style.background = heads.length === 1 ? attentionColour(weights[0])
      : `linear-gradient(to right, ${heads.map((h, i) => {
        const alpha = Math.round(255 * Math.min(1, weights[i])).toString(16).padStart(2, "0");
        return `${headColour(h)}${alpha} ${(100 * i) / heads.length}% ${(100 * (i + 1)) / heads.length}%`;
      }).join(", ")})`;
    if (heads.length === 1 && weights[0] > 0.6) item.classList.add("dark");
  });
  view.dataset.query = query === null ? "" : String(query);
}

function showAttentionControls() {
  const kinds = attentionKinds(attentionReply);
  fillOptions($("#att-kind"), Object.entries(kinds).map(([name, kind]) => [name, kind.label]));
  fillOptions($("#att-layer"), attentionReply.layers.map((layer, i) => [String(i), `layer ${layer}`]));
  fillOptions($("#att-head"), [["all", "all heads"],
    ...attentionReply.heads.map((head, i) => [String(i), `head ${head}`])]);
  $("#att-controls").hidden = false;
}

for (const id of ["#att-kind", "#att-layer", "#att-head"]) {
  $(id).addEventListener("change", () => attentionReply && drawAttention());
}

$("#att-model").addEventListener("change", () => {
  $("#att-text-b-label").hidden = !$("#att-model").value.startsWith("bert");
});

handle($("#attention-form"), async () => {
  $("#att-controls").hidden = true;
  attentionReply = null;
  const payload = { model: $("#att-model").value, text: $("#att-text").value };
  const textB = $("#att-text-b").value.trim();
  if (textB && !$("#att-text-b-label").hidden) payload.text_b = textB;
  const body = await postJSON("/v1/attention", payload);
  attentionReply = body;
  $("#att-meta").replaceChildren(element("span", { text: body.translation !== null ? `→ ${body.translation}` : "" }),
    element("span", { class: "meta", text: ` ${body.model} · ${body.layers.length} layers × ${body.heads.length} heads` }));
  showAttentionControls();
  drawAttention();
});

// ---- which panels this service can answer ------------------------------------------------------------

function setNotice(panel, text) {
  const notice = $(".notice", panel);
  notice.textContent = text || "";
  notice.hidden = !text;
}

function fillSelect(select, models, valueOf) {
  const current = select.value;
  select.replaceChildren(...models.map((m) => element("option", { value: valueOf(m), text: valueOf(m) })));
  if (models.some((m) => valueOf(m) === current)) select.value = current;
}

// A form whose route this service lacks is switched off; a panel whose model is not loaded says so
// (a request still shows the service's 503, which names the command that trains the model).
async function survey() {
  const status = $("#models-status");
  let paths = null;
  try {
    paths = (await getJSON("/openapi.json")).paths;
  } catch {
    // without the schema every form stays on, and a missing route answers 404 in its panel
  }
  let models = null;
  try {
    models = (await getJSON("/v1/models")).data;
    status.textContent = models.length
      ? `${models.length} models loaded: ${models.map((m) => m.id).join(", ")}`
      : "No models are loaded: train them with `python -m training all`.";
    status.classList.remove("warn");
  } catch (error) {
    status.textContent = error.status === 401 ? "This service needs an API key: enter it above." : `Models: ${error.message}`;
    status.classList.add("warn");
  }
  for (const panel of document.querySelectorAll(".panel")) {
    const missing = [];
    for (const form of panel.querySelectorAll("form")) {
      const absent = paths !== null && !paths[form.dataset.route];
      if (absent) missing.push(form.dataset.route);
      form.querySelectorAll("button, input, select, textarea").forEach((control) => { control.disabled = absent; });
    }
    const families = panel.dataset.families.split(" ");
    if (missing.length) {
      setNotice(panel, `This service has no ${missing.join(" or ")} route.`);
    } else if (models && !models.some((m) => families.includes(m.family))) {
      setNotice(panel, `No ${families.join(" or ")} model is loaded here; requests will answer 503.`);
    } else {
      setNotice(panel, "");
    }
  }
  $("#gen-stop").disabled = generation === null;
  if (models) {
    const generators = models.filter((m) => m.family === "gpt" || m.family === "lm");
    if (generators.length) fillSelect($("#gen-model"), generators, (m) => m.id);
    const classifiers = models.filter((m) => m.family === "classifier");
    if (classifiers.length) fillSelect($("#clf-model"), classifiers, (m) => m.name);
    // The models with self-attention: BERT, GPT and the Transformer translators (their architecture says so).
    const attending = models.filter((m) => m.family === "bert" || m.family === "gpt"
      || (m.family === "seq2seq" && /transformer/i.test(m.architecture)));
    if (attending.length) fillSelect($("#att-model"), attending, (m) => m.id);
  }
}

const keyInput = $("#api-key");
keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
  survey();
});
$("#key-form").addEventListener("submit", (event) => event.preventDefault());
survey();
