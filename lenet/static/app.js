// The page of `python demo.py`: draw on the pad, send it to POST /api/predict, draw what comes back.
// Plain JavaScript, no framework and nothing from the internet, so it works offline for years.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const sourceLine = document.getElementById("source");

// What the browser test reads: each stroke's time from lifting the pen to updated bars (ms).
window.lenetStats = { latencies: [], responses: 0 };

let classNames = [];
let padShowsPicture = false; // a test image or an upload is on the pad: the next stroke starts afresh

// -- the drawing pad ----------------------------------------------------------------------------

function clearPad() {
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.restore();
  padShowsPicture = false;
}

// A round brush about 2 pixels wide at the data set's scale (the drawing's box is shrunk to 20 or 28
// pixels), with soft edges like the data sets' anti-aliased strokes.
function brush() {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.shadowColor = "rgba(0, 0, 0, 0.6)";
  ctx.shadowBlur = 4;
}

function padPoint(event) {
  const r = pad.getBoundingClientRect();
  return [((event.clientX - r.left) * pad.width) / r.width, ((event.clientY - r.top) * pad.height) / r.height];
}

let drawing = false;
let last = null;

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  if (padShowsPicture) clearPad();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  last = padPoint(event);
  brush();
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  ctx.lineTo(last[0] + 0.01, last[1]); // a dot for a click without a move
  ctx.stroke();
  sourceLine.textContent = "your drawing";
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  const p = padPoint(event);
  brush();
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  ctx.lineTo(p[0], p[1]);
  ctx.stroke();
  last = p;
  predictSoon();
});

function endStroke(event) {
  if (!drawing) return;
  drawing = false;
  if (pad.hasPointerCapture(event.pointerId)) pad.releasePointerCapture(event.pointerId);
  clearTimeout(soonTimer);
  soonTimer = null;
  strokeEnd = { at: performance.now(), id: requestId + 1 }; // the next request sent carries this stroke
  submit(padRequest);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function padRequest() {
  return { image: pad.toDataURL("image/png") };
}

// -- requests: one in flight at a time; the newest waiting request replaces older ones -------------

let requestId = 0;
let inFlight = false;
let waiting = null;
let soonTimer = null;
let strokeEnd = null;

function predictSoon() {
  // While drawing: at most one request every 40 ms (the answer follows the pen, the server is not flooded).
  if (soonTimer === null) {
    soonTimer = setTimeout(() => {
      soonTimer = null;
      submit(padRequest);
    }, 40);
  }
}

function submit(makeRequest) {
  if (inFlight) {
    waiting = makeRequest;
    return;
  }
  inFlight = true;
  document.body.dataset.busy = "1";
  const id = ++requestId;
  fetch("/api/predict", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(makeRequest()),
  })
    .then((response) => response.json().then((body) => ({ ok: response.ok, body })))
    .then(({ ok, body }) => {
      if (!ok) throw new Error(body.error || "the server refused the request");
      render(body, id);
      statusLine.textContent = "";
      statusLine.classList.remove("error");
    })
    .catch((error) => {
      statusLine.textContent = String(error.message || error);
      statusLine.classList.add("error");
    })
    .finally(() => {
      inFlight = false;
      if (waiting) {
        const next = waiting;
        waiting = null;
        submit(next);
      } else {
        document.body.dataset.busy = "0";
      }
    });
}

// -- drawing the answer ---------------------------------------------------------------------------

// viridis at 9 points, interpolated: the colour map of the feature maps in visualize.py's pictures.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

function paint(canvas, values, colour) {
  const c = canvas.getContext("2d");
  const img = c.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < values.length; i++) {
    const [r, g, b] = colour(values[i]);
    img.data[4 * i] = r;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = b;
    img.data[4 * i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
}

function paintMaps(container, maps) {
  const [count, h, w] = maps.shape;
  const values = maps.values;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi > lo ? hi - lo : 1; // one colour scale for all maps of a layer, as in visualize.py
  while (container.children.length < count) {
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    container.appendChild(canvas);
  }
  for (let m = 0; m < count; m++) {
    const slice = values.slice(m * h * w, (m + 1) * h * w);
    paint(container.children[m], slice, (v) => viridis((v - lo) / span));
  }
}

function paintSaliency(values) {
  let m = 0;
  for (const v of values) m = Math.max(m, Math.abs(v));
  const scale = m > 0 ? m : 1;
  paint(document.getElementById("saliency"), values, (v) => {
    const t = v / scale; // -1 .. 1: blue, white, red
    const a = Math.round(255 * (1 - Math.abs(t)));
    return t >= 0 ? [255, a, a] : [a, a, 255];
  });
}

function makeBars() {
  const bars = document.getElementById("bars");
  bars.textContent = "";
  classNames.forEach((name, k) => {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.class = String(k);
    row.innerHTML = '<span class="bar-name"></span><span class="bar-track"><span class="bar-fill"></span></span>' +
      '<span class="bar-value"></span>';
    row.querySelector(".bar-name").textContent = name;
    bars.appendChild(row);
  });
}

function render(answer, id) {
  const rows = document.querySelectorAll("#bars .bar-row");
  answer.probabilities.forEach((p, k) => {
    const row = rows[k];
    row.dataset.p = String(p); // full precision, for the tests
    row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar-value").textContent = `${(100 * p).toFixed(1)}%`;
    row.classList.toggle("top", k === answer.predicted);
  });
  const prediction = document.getElementById("prediction");
  prediction.textContent = answer.predicted_name;
  prediction.dataset.class = String(answer.predicted);
  if (strokeEnd !== null && id >= strokeEnd.id) {
    window.lenetStats.latencies.push(performance.now() - strokeEnd.at);
    strokeEnd = null;
  }
  paint(document.getElementById("input"), answer.input, (v) => {
    const g = Math.round(255 * v);
    return [g, g, g];
  });
  paintMaps(document.getElementById("c1"), answer.c1);
  paintMaps(document.getElementById("c3"), answer.c3);
  paintSaliency(answer.saliency);
  window.lenetStats.responses += 1;
  document.body.dataset.responses = String(window.lenetStats.responses);
}

// -- test images and uploads ------------------------------------------------------------------------

function showOnPad(drawPicture) {
  clearPad();
  ctx.save();
  ctx.imageSmoothingEnabled = false;
  drawPicture();
  ctx.restore();
  padShowsPicture = true;
}

document.getElementById("random").addEventListener("click", () => {
  fetch("/api/test-image")
    .then((response) => response.json().then((body) => ({ ok: response.ok, body })))
    .then(({ ok, body }) => {
      if (!ok) throw new Error(body.error);
      const small = document.createElement("canvas");
      small.width = 28;
      small.height = 28;
      paint(small, body.pixels, (v) => {
        const g = Math.round(255 * v);
        return [g, g, g];
      });
      showOnPad(() => ctx.drawImage(small, 0, 0, pad.width, pad.height));
      sourceLine.textContent = `test image #${body.index} (true class: ${body.label_name})`;
      sourceLine.dataset.index = String(body.index);
      submit(() => ({ pixels: body.pixels })); // as the data set holds it: no preprocessing
    })
    .catch((error) => {
      statusLine.textContent = String(error.message || error);
      statusLine.classList.add("error");
    });
});

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const dataUrl = reader.result;
    const img = new Image();
    img.onload = () => {
      const s = Math.min(pad.width / img.width, pad.height / img.height);
      const w = img.width * s;
      const h = img.height * s;
      showOnPad(() => ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h));
    };
    img.src = dataUrl;
    sourceLine.textContent = `uploaded: ${file.name}`;
    submit(() => ({ image: dataUrl })); // the server decodes and preprocesses it (or says why not)
  };
  reader.readAsDataURL(file);
  event.target.value = "";
});

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  sourceLine.textContent = "Draw with the mouse, a pen or a finger.";
  submit(padRequest);
});

// -- start ----------------------------------------------------------------------------------------

clearPad();
fetch("/api/info")
  .then((response) => response.json())
  .then((info) => {
    classNames = info.class_names;
    makeBars();
    const acc = typeof info.val_acc === "number" ? info.val_acc.toFixed(4) : "?";
    document.getElementById("meta").textContent =
      `checkpoint ${info.checkpoint} · ${info.dataset} · epoch ${info.epoch} · validation accuracy ${acc}`;
    const about = document.getElementById("about");
    about.textContent = `lenet ${info.lenet_version}: LeNet-5 written from scratch in NumPy, every gradient by hand. `;
    if (info.project_url) {
      const link = document.createElement("a");
      link.href = info.project_url;
      link.textContent = "The project";
      about.appendChild(link);
    }
    document.body.dataset.ready = "1";
  })
  .catch((error) => {
    statusLine.textContent = `cannot reach the server: ${error.message || error}`;
    statusLine.classList.add("error");
  });
