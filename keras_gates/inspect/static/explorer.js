// keras-gates explorer: the page of `keras-gates explore` (served by keras_gates/inspect/explorer.py).
// Plotly draws the units x time heatmap; its box select (horizontal) is the brush. The page keeps
// the state below and marks what it has shown in data-* attributes (the browser test waits on them).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, heat: null, span: null, units: [], shown: null, threshold: 0.5 };
const CHARS = { "\n": "⏎", " ": "·", "\t": "→", "\r": "␍" };

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function say(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function options(select, values, labels = values) {
  select.replaceChildren(
    ...values.map((value, i) => new Option(labels[i], value)),
  );
}

function currentLayer() {
  return state.info.layers.find((layer) => layer.key === $("layer").value);
}

// ------------------------------------------------------------------------------------ heatmap
function shapes() {
  const heat = state.heat;
  const units = heat.z.length, steps = heat.z[0].length;
  const box = (x0, x1, y0, y1, color, dash) => ({
    type: "rect", xref: "x", yref: "y", x0, x1, y0, y1,
    line: { color, width: 2, dash }, fillcolor: "rgba(0,0,0,0)",
  });
  const drawn = state.units.map((u) => box(-0.5, steps - 0.5, u - 0.5, u + 0.5, "#111", "solid"));
  const span = state.span;
  if (span && span.sample === heat.sample) {
    drawn.push(box(span.start - 0.5, span.stop - 0.5, -0.5, units - 0.5, "#ff8c00", "dash"));
  }
  const shown = state.shown;
  if (shown && shown.sample === heat.sample) {
    drawn.push(box(shown.start - 0.5, shown.stop - 0.5, -0.5, units - 0.5, "#00a651", "solid"));
  }
  return drawn;
}

function figure(heat) {
  const units = heat.z.length, steps = heat.z[0].length;
  const x = Array.from({ length: steps }, (_, i) => i);
  const data = [{
    type: "heatmap", z: heat.z, x, y: Array.from({ length: units }, (_, i) => i),
    zmin: heat.range[0], zmax: heat.range[1], colorscale: "RdBu",
    colorbar: { title: { text: heat.signal } }, xgap: 0, ygap: 0,
    hovertemplate: "step %{x}<br>unit %{y}<br>%{z:.3f}<extra></extra>",
  }];
  const layout = {
    dragmode: "select", selectdirection: "h", margin: { l: 56, r: 16, t: 8, b: 40 },
    xaxis: { title: { text: "time step" }, range: [-0.5, steps - 0.5] },
    yaxis: { title: { text: "unit" }, autorange: "reversed", dtick: units > 32 ? undefined : 1 },
    shapes: shapes(),
  };
  if (heat.text) {
    data.push({
      type: "scatter", mode: "text", x, y: x.map(() => 0), xaxis: "x", yaxis: "y2",
      text: heat.text.map((c, i) => (heat.mask[i] ? CHARS[c] || c : " ")),
      hoverinfo: "skip", showlegend: false,
      textfont: { family: "monospace", size: steps > 80 ? 10 : 14 },
    });
    layout.yaxis.domain = [0.12, 1];
    layout.yaxis2 = { domain: [0, 0.07], visible: false, fixedrange: true, range: [-1, 1] };
    layout.xaxis.anchor = "y2";
  }
  return { data, layout };
}

async function render() {
  const layer = $("layer").value, signal = $("signal").value, sample = Number($("sample").value);
  const query = new URLSearchParams({ layer, signal, sample });
  const heat = await api(`api/heatmap?${query}`);
  state.heat = heat;
  setThresholdRange(heat.range);
  const { data, layout } = figure(heat);
  const plot = $("heatmap");
  await Plotly.react(plot, data, layout, { displaylogo: false, responsive: true });
  plot.dataset.shown = `${layer}|${signal}|${sample}`;
  state.described = `${layer}: ${signal} of sample ${sample} ` +
    `(${heat.z.length} units x ${heat.z[0].length} steps)`;
  say(state.described);
}

// The slider spans the signal's range; the threshold chosen stays while it lies inside it,
// else it moves to the middle of the new range.
function setThresholdRange([low, high]) {
  const slider = $("threshold");
  const min = Math.floor(low * 100) / 100, max = Math.ceil(high * 100) / 100;
  if (!(state.threshold >= min && state.threshold <= max)) {
    state.threshold = Math.round(((min + max) / 2) * 100) / 100;
  }
  slider.min = min.toFixed(2);
  slider.max = max.toFixed(2);
  slider.value = state.threshold.toFixed(2);
  $("threshold-value").textContent = state.threshold.toFixed(2);
}

function redraw() {
  Plotly.relayout($("heatmap"), { shapes: shapes() });
}

// ------------------------------------------------------------------------------------ brush
function onSelected(event) {
  if (!event || !event.range || !state.heat) return;
  const steps = state.heat.z[0].length;
  const [x0, x1] = event.range.x;
  const start = Math.max(0, Math.round(x0)), stop = Math.min(steps, Math.round(x1) + 1);
  if (stop <= start) return;
  state.span = { sample: state.heat.sample, start, stop };
  state.shown = null;
  return runMatch();
}

async function runMatch() {
  const span = state.span;
  if (!span) return;
  const threshold = state.threshold;
  const body = {
    layer: $("layer").value, signal: $("signal").value, threshold, k: 10,
    sample: span.sample, start: span.start, stop: span.stop,
  };
  let found;
  try {
    found = await api("api/match", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  } catch (err) {  // no stale list under an error
    state.units = [];
    $("matches").replaceChildren();
    $("units").textContent = "No match: see the message above.";
    redraw();
    throw err;
  }
  state.units = found.units;
  say(state.described);
  listMatches(found, body);
  redraw();
}

function listMatches(found, asked) {
  const where = `sample ${asked.sample}, steps ${asked.start}–${asked.stop - 1}`;
  const above = `above ${asked.threshold.toFixed(2)}`;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  $("units").textContent = found.units.length
    ? `On (${above}) at every step of ${where}: ${plural(found.units.length, "unit")} ` +
      `(${found.units.join(", ")}), all on together at ` +
      `${plural(found.matches.length, "other place")}:`
    : `No unit stays ${above} at every step of ${where}: lower the threshold or select a ` +
      "shorter span.";
  const items = found.matches.map((m) => {
    const item = document.createElement("li");
    Object.assign(item.dataset, { sample: m.sample, start: m.start, stop: m.stop });
    item.append(
      `sample ${m.sample}, steps ${m.start}–${m.stop - 1}, score ${m.score.toFixed(2)} `,
    );
    if (m.text !== null) {
      const snippet = document.createElement("span");
      snippet.className = "snippet";
      snippet.textContent = [...m.text].map((c) => CHARS[c] || c).join("");
      item.append(snippet);
    }
    item.addEventListener("click", () => showMatch(m, item).catch(fail));
    return item;
  });
  $("matches").replaceChildren(...items);
  $("matches").dataset.span = `${asked.sample},${asked.start},${asked.stop},${asked.threshold}`;
}

async function showMatch(m, item) {
  state.shown = { sample: m.sample, start: m.start, stop: m.stop };
  for (const other of $("matches").children) other.classList.toggle("shown", other === item);
  if (Number($("sample").value) !== m.sample) {
    $("sample").value = String(m.sample);
    await render();
  } else {
    redraw();
  }
  $("heatmap").dataset.match = `${m.sample},${m.start},${m.stop}`;
}

// ------------------------------------------------------------------------------------ concepts
async function loadConcepts() {
  const table = await api("api/concepts");
  const rows = [];
  for (const [name, concept] of Object.entries(table.concepts)) {
    for (const row of concept.top) {
      const tr = document.createElement("tr");
      const score = row.score === null ? "n/a" : row.score.toFixed(3);
      for (const cell of [name, concept.metric, row.layer, row.signal, row.unit, score]) {
        tr.append(Object.assign(document.createElement("td"), { textContent: String(cell) }));
      }
      tr.addEventListener("click", () => showUnit(row).catch(fail));
      rows.push(tr);
    }
  }
  $("concepts").tBodies[0].replaceChildren(...rows);
  $("concepts-section").hidden = false;
}

async function showUnit(row) {
  $("layer").value = row.layer;
  fillSignals(row.signal);
  state.units = [row.unit];
  state.span = null;
  state.shown = null;
  await render();
}

// ------------------------------------------------------------------------------------ set-up
function fillSignals(wanted) {
  const signals = currentLayer().signals;
  options($("signal"), signals);
  $("signal").value = signals.includes(wanted) ? wanted : signals[0];
}

function fail(err) {
  say(err.message, true);
}

function changed(what) {
  return () => {
    if (what === "layer") fillSignals($("signal").value);
    if (what !== "sample") { state.span = null; state.units = []; state.shown = null; }
    render().then(runMatch).catch(fail);
  };
}

async function main() {
  state.info = await api("api/layers");
  options($("layer"), state.info.layers.map((layer) => layer.key));
  fillSignals("hidden");
  const samples = Array.from({ length: state.info.batch }, (_, i) => String(i));
  options($("sample"), samples);
  $("layer").addEventListener("change", changed("layer"));
  $("signal").addEventListener("change", changed("signal"));
  $("sample").addEventListener("change", changed("sample"));
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  });
  $("threshold").addEventListener("change", () => {
    state.threshold = Number($("threshold").value);
    runMatch().catch(fail);
  });
  await render();
  $("heatmap").on("plotly_selected", (event) => {
    Promise.resolve(onSelected(event)).catch(fail);
  });
  if (state.info.concepts) await loadConcepts();
  document.body.dataset.ready = "true";
}

main().catch(fail);
