// The aligner-chains playground: sends a question and an answer to this server's POST /v1/corrections
// (streamed server-sent events, read with fetch, since EventSource cannot POST), shows the correction as it is
// generated, then the answer and the correction side by side with the server's word-level diff highlighted.
// Text from the server is only ever set as text (never parsed as HTML). The API key lives in the key field
// of this tab and is sent as a bearer token; nothing is stored.
"use strict";

const $ = (id) => document.getElementById(id);

const TITLES = {
  400: "Bad input", 401: "API key needed", 404: "Not found", 408: "Request too slow", 413: "Too long",
  415: "Bad input", 429: "Server busy", 500: "Server error", 502: "Model server failed", 504: "Model server timed out",
};

function init() {
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    correct();
  });
  fetch("playground/settings.json")
    .then((response) => response.json())
    .then(applySettings)
    .catch((err) => showError(`Could not read the playground settings: ${err.message}`));
}

function applySettings(settings) {
  $("model").textContent = `model: ${settings.model}`;
  $("key-row").hidden = !settings.api_key_required;
  if (settings.max_tokens_limit) $("max-tokens").placeholder = `server default (limit ${settings.max_tokens_limit})`;
  const box = $("examples");
  for (const example of settings.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = example.label;
    button.title = `The demo Aligner writes: ${example.correction}`;
    button.addEventListener("click", () => {
      $("question").value = example.question;
      $("answer").value = example.answer;
    });
    box.append(button);
  }
  box.hidden = settings.examples.length === 0;
}

function request() {
  const body = { question: $("question").value, answer: $("answer").value, include_diff: true };
  body.stream = $("stream").checked;
  const maxTokens = $("max-tokens").value.trim();
  if (maxTokens) body.max_new_tokens = Number(maxTokens);
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return { method: "POST", headers, body: JSON.stringify(body) };
}

async function correct() {
  const options = request();
  const stream = JSON.parse(options.body).stream;
  const started = performance.now();
  const clock = { started, firstText: null };
  busy(true, "Correcting…");
  showError(null);
  $("result").hidden = false;
  $("original-view").textContent = $("answer").value;
  $("corrected-view").textContent = "";
  $("corrected-view").classList.toggle("streaming", stream);
  $("facts").replaceChildren();
  $("stats").hidden = true;
  try {
    const response = await fetch("v1/corrections", options);
    if (!response.ok) {
      await showHttpError(response);
      $("result").hidden = true;
      return;
    }
    if (!stream) {
      render(await response.json(), clock);
      return;
    }
    let done = false;
    await readEvents(response, (event) => {
      if (event.type === "delta") {
        if (clock.firstText === null) clock.firstText = performance.now();
        $("corrected-view").append(event.text);
      } else if (event.type === "correction") {
        render(event.correction, clock);
        done = true;
      } else if (event.type === "error") {
        showError(describe(event.error.status || 0, event.error));
      }
    });
    if (!done && $("error").hidden) showError("The stream ended before the correction was complete.");
  } catch (err) {
    showError(`Could not reach the server: ${err.message}`);
  } finally {
    $("corrected-view").classList.remove("streaming");
    busy(false, `Done in ${seconds(performance.now() - started)}`);
  }
}

// Calls onEvent with each JSON payload of a server-sent-events body; "[DONE]" ends it.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
  }
}

function render(correction, clock) {
  $("original-view").replaceChildren(marked(correction.original, correction.diff, "orig", "del"));
  $("corrected-view").replaceChildren(marked(correction.corrected, correction.diff, "corr", "ins"));
  const facts = [
    ["finish reason", correction.finish_reason],
    ["changed", correction.changed ? "yes" : "no"],
    ["prompt tokens", correction.prompt_tokens],
    ["completion tokens", correction.completion_tokens],
    ["latency (server)", seconds(correction.latency_s * 1000)],
    ["in the browser", seconds(performance.now() - clock.started)],
  ];
  if (clock.firstText !== null) facts.push(["first text after", seconds(clock.firstText - clock.started)]);
  if (correction.error) facts.push(["error", correction.error]);
  $("facts").replaceChildren(...facts.map(([name, value]) => fact(name, value)));
  const rows = Object.entries(correction.stats || {}).map(([name, value]) => statRow(name, value));
  $("stats").tBodies[0].replaceChildren(...rows);
  $("stats").hidden = rows.length === 0;
}

// The text with the diff's spans on one side (`orig` or `corr`) wrapped in <del> or <ins>.
function marked(text, diff, side, tag) {
  const out = document.createDocumentFragment();
  let pos = 0;
  for (const edit of diff || []) {
    const start = edit[`${side}_start`];
    const end = edit[`${side}_end`];
    if (start === end) continue; // nothing on this side: a pure insertion or deletion on the other
    out.append(text.slice(pos, start));
    const span = document.createElement(tag);
    span.textContent = text.slice(start, end);
    out.append(span);
    pos = end;
  }
  out.append(text.slice(pos));
  return out;
}

// A name and its value as two elements in one container: <div><dt><dd> for facts, <tr><th><td> for stats.
function pair(tags, name, text) {
  const [outer, head, cell] = tags.map((tag) => document.createElement(tag));
  head.textContent = name;
  cell.textContent = text;
  outer.append(head, cell);
  return outer;
}

function fact(name, value) {
  return pair(["div", "dt", "dd"], name, String(value));
}

function statRow(name, value) {
  return pair(["tr", "th", "td"], name, typeof value === "object" && value !== null ? JSON.stringify(value) : String(value));
}

async function showHttpError(response) {
  let error = { message: response.statusText || "no details" };
  try {
    error = (await response.json()).error || error;
  } catch (err) {
    // not JSON: keep the status text
  }
  if (response.status === 401) {
    $("key-row").hidden = false;
    $("api-key").focus();
  }
  showError(describe(response.status, error, response.headers.get("Retry-After")));
}

function describe(status, error, retryAfter) {
  let title = TITLES[status] || "Error";
  if (error.code === "context_length_exceeded" || error.code === "prompt_too_long") title = "Too long";
  if (status === 401 && $("api-key").value.trim()) title = "Wrong API key";
  let text = `${title}${status ? ` (HTTP ${status})` : ""}: ${error.message}`;
  if (retryAfter) text += ` Retry after ${retryAfter} s.`;
  return text;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function busy(on, text) {
  $("correct").disabled = on;
  $("status").textContent = text;
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

init();
