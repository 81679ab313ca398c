// What every panel of the page shares: calls to the JSON API (timed), packed arrays, colour maps, legends, bars.
// It only draws: every number it shows comes from lenet's Python in the API's answers.

// -- timing: what the browser tests read --------------------------------------------------------------------
// actions: the time from a learner's action to the last panel it changes being drawn (ms), by action;
// server: the milliseconds the server computed for each call (its Server-Timing header, the wait for the
// model's lock left out), by call;
// latencies: the strokes' times, as before.
// calls: the time from sending a call to its answer parsed (ms), by call: the rest of an action is drawing.
// draws: the time each panel took to draw an answer (ms), by panel.
// cpu: the CPU time of the server's thread for each call (ms), by call.
export const stats = { latencies: [], actions: {}, server: {}, cpu: {}, calls: {}, draws: {}, responses: 0 };
window.lenetStats = stats;

let seq = 0; // every API call gets the next number
let inFlight = 0;
let pending = []; // actions waiting for their panels

export function startAction(name, views) {
  pending.push({ name, t0: performance.now(), after: seq, views: new Set(views) });
}

// A panel has drawn the answer to call number r, starting at t0: the actions started before that call are done.
export function rendered(view, r, t0) {
  const now = performance.now();
  if (t0 !== undefined) (stats.draws[view] ||= []).push(now - t0);
  pending = pending.filter((p) => {
    if (r > p.after) p.views.delete(view);
    if (p.views.size > 0) return true;
    (stats.actions[p.name] ||= []).push(now - p.t0);
    if (p.name === "stroke") stats.latencies.push(now - p.t0);
    return false;
  });
}

// Record a page action that needs no call (hovering): its time from the event to the drawing.
export function timed(name, t0) {
  (stats.actions[name] ||= []).push(performance.now() - t0);
}

function setBusy() {
  document.body.dataset.busy = inFlight > 0 ? "1" : "0";
}

// GET (no body) or POST (a body) one API call: {body, r}; a refused call throws its one-line reason.
export async function api(path, body) {
  const r = ++seq;
  const t0 = performance.now();
  inFlight += 1;
  setBusy();
  try {
    const options = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
    const response = await fetch(path, options);
    const timing = response.headers.get("Server-Timing") || "";
    const compute = /compute;dur=([0-9.]+)/.exec(timing);
    const cpu = /cpu;dur=([0-9.]+)/.exec(timing);
    if (compute) (stats.server[path.split("?")[0]] ||= []).push(Number(compute[1]));
    if (cpu) (stats.cpu[path.split("?")[0]] ||= []).push(Number(cpu[1]));
    const answer = await response.json();
    (stats.calls[path.split("?")[0]] ||= []).push(performance.now() - t0);
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    return { body: answer, r };
  } finally {
    inFlight -= 1;
    setBusy();
  }
}

// Send a panel's call and draw its answer, the newest only: an older answer that arrives late is dropped.
export function refreshPanel(panel, view, path, body, draw) {
  panel.ticket = (panel.ticket || 0) + 1;
  const ticket = panel.ticket;
  return api(path, body)
    .then(({ body: answer, r }) => {
      if (ticket !== panel.ticket) return;
      const t0 = performance.now();
      draw(answer);
      rendered(view, r, t0);
    })
    .catch(showError);
}

// -- packed arrays: {"shape", "dtype", "data": base64 of little-endian bytes} (lenet/wire.py) ---------------
const TYPES = { float32: Float32Array, float64: Float64Array, int32: Int32Array };
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function unpack(packed) {
  const text = atob(packed.data);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const Type = TYPES[packed.dtype];
  let values;
  if (LITTLE_ENDIAN) {
    values = new Type(bytes.buffer);
  } else {
    const view = new DataView(bytes.buffer);
    values = new Type(bytes.length / Type.BYTES_PER_ELEMENT);
    const get = { float32: "getFloat32", float64: "getFloat64", int32: "getInt32" }[packed.dtype];
    for (let i = 0; i < values.length; i++) values[i] = view[get](i * Type.BYTES_PER_ELEMENT, true);
  }
  return { shape: packed.shape, values };
}

// -- colours ------------------------------------------------------------------------------------------------
// viridis at 9 points, interpolated: the colour map of the feature maps in visualize.py's pictures.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

export function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

// Blue (negative), white (0), red (positive), on a scale symmetric about zero: matplotlib's RdBu_r, simplified.
export function diverging(scale) {
  return (v) => {
    const t = Math.max(-1, Math.min(1, v / scale));
    const a = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? [255, a, a] : [a, a, 255];
  };
}

export function grey(v) {
  const g = Math.round(255 * Math.min(Math.max(v, 0), 1));
  return [g, g, g];
}

export function ranged(lo, hi) {
  const span = hi > lo ? hi - lo : 1;
  return (v) => viridis((v - lo) / span);
}

// -- canvases ------------------------------------------------------------------------------------------------
// values (row-major, width x height) painted one pixel each; the canvas keeps them (canvas.lenetValues) for tests.
export function paint(canvas, values, colour, width, height) {
  canvas.width = width ?? canvas.width;
  canvas.height = height ?? canvas.height;
  const c = canvas.getContext("2d");
  const img = c.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < canvas.width * canvas.height; i++) {
    const [r, g, b] = colour(values[i]);
    img.data[4 * i] = r;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = b;
    img.data[4 * i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
  canvas.lenetValues = values;
}

// (count, h, w) maps, one canvas each, in `container`, all on one colour scale.
export function paintMaps(container, values, shape, colour, cssSize) {
  const [count, h, w] = shape;
  while (container.children.length > count) container.lastChild.remove();
  while (container.children.length < count) container.appendChild(document.createElement("canvas"));
  for (let m = 0; m < count; m++) {
    const canvas = container.children[m];
    if (cssSize) canvas.style.width = canvas.style.height = `${cssSize}px`;
    paint(canvas, values.subarray ? values.subarray(m * h * w, (m + 1) * h * w) : values.slice(m * h * w, (m + 1) * h * w),
      colour, w, h);
  }
}

// A grid of (rows x cols) tiles of (h x w) values in one canvas, a 1-pixel white gap between tiles:
// C3's 16 x 6 filters, or C1's 6. tile(r, c) gives the offset of that tile's first value.
export function paintTiles(canvas, values, rows, cols, h, w, tile, colour) {
  const width = cols * (w + 1) - 1;
  const height = rows * (h + 1) - 1;
  const grid = new Float64Array(width * height).fill(NaN);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const start = tile(r, c);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) grid[(r * (h + 1) + y) * width + c * (w + 1) + x] = values[start + y * w + x];
      }
    }
  }
  paint(canvas, grid, (v) => (Number.isNaN(v) ? [255, 255, 255] : colour(v)), width, height);
  canvas.lenetValues = values;
}

// -- legends -------------------------------------------------------------------------------------------------
export function fmt(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–"; // a figure the records leave out (null)
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 0.01 && a < 1000 ? v.toPrecision(3) : v.toExponential(2);
}

// A colour ramp with its end values and what its colours mean. kind: "diverging" (scale = the largest |v|),
// "viridis" (lo .. hi), or "grey" (0 .. 1).
export function legend(container, kind, a, b, meaning) {
  const ends = kind === "diverging" ? [-a, 0, a] : kind === "grey" ? [0, 0.5, 1] : [a, (a + b) / 2, b];
  container.dataset.scale = String(kind === "diverging" ? a : b);
  if (container.dataset.kind === kind) { // drawn before: only the numbers and the words change
    container.querySelectorAll(".ramp-labels span").forEach((span, i) => { span.textContent = fmt(ends[i]); });
    container.querySelector(".legend-text").textContent = meaning;
    return;
  }
  container.dataset.kind = kind;
  container.classList.add("legend");
  container.textContent = "";
  const ramp = document.createElement("canvas");
  ramp.className = "ramp";
  const steps = 64;
  const values = Array.from({ length: steps }, (_, i) => i / (steps - 1));
  const colour = kind === "diverging" ? (t) => diverging(1)(2 * t - 1) : kind === "grey" ? grey : viridis;
  paint(ramp, values, colour, steps, 1);
  const labels = document.createElement("div");
  labels.className = "ramp-labels";
  for (const v of ends) {
    const span = document.createElement("span");
    span.textContent = fmt(v);
    labels.appendChild(span);
  }
  const text = document.createElement("p");
  text.className = "legend-text";
  text.textContent = meaning;
  container.append(ramp, labels, text);
}

// -- bars ----------------------------------------------------------------------------------------------------
// Signed values as bars up (red, positive) and down (blue, negative) from a middle line, on +-scale.
export function signedBars(canvas, values, scale, labels) {
  const n = values.length;
  const barW = Math.max(2, Math.min(24, Math.floor(600 / n)));
  const labelH = labels ? 64 : 0;
  canvas.width = n * barW + 2;
  canvas.height = 90 + labelH;
  const c = canvas.getContext("2d");
  c.clearRect(0, 0, canvas.width, canvas.height);
  const mid = 45;
  c.fillStyle = "#888";
  c.fillRect(0, mid, canvas.width, 1);
  for (let i = 0; i < n; i++) {
    const t = Math.max(-1, Math.min(1, values[i] / scale));
    c.fillStyle = t >= 0 ? "#c8102e" : "#1f5fbf";
    const h = Math.round(Math.abs(t) * 42);
    c.fillRect(1 + i * barW, t >= 0 ? mid - h : mid + 1, Math.max(1, barW - 1), h);
  }
  if (labels) {
    c.fillStyle = "#1d2330";
    c.font = "10px sans-serif";
    for (let i = 0; i < n; i++) {
      c.save();
      c.translate(1 + i * barW + barW / 2 - 4, 92);
      c.rotate(Math.PI / 2);
      c.fillText(labels[i].slice(0, 11), 0, 0);
      c.restore();
    }
  }
  canvas.lenetValues = values;
}

// Probability rows: a name, a bar, a percentage; data-p holds the full number for tests.
export function probabilityRows(container, names, probabilities, highlight, className = "") {
  if (container.children.length !== names.length) {
    container.textContent = "";
    names.forEach((name, k) => {
      const row = document.createElement("div");
      row.className = `bar-row ${className}`;
      row.dataset.class = String(k);
      row.innerHTML = '<span class="bar-name"></span><span class="bar-track"><span class="bar-fill"></span></span>' +
        '<span class="bar-value"></span>';
      row.querySelector(".bar-name").textContent = name;
      container.appendChild(row);
    });
  }
  probabilities.forEach((p, k) => {
    const row = container.children[k];
    row.dataset.p = String(p);
    row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar-value").textContent = `${(100 * p).toFixed(1)}%`;
    row.classList.toggle("top", k === highlight);
  });
}

export function el(id) {
  return document.getElementById(id);
}

export function showError(error) {
  const line = el("status");
  line.textContent = String(error.message || error);
  line.classList.add("error");
}

export function clearError() {
  const line = el("status");
  line.textContent = "";
  line.classList.remove("error");
}
