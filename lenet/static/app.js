// The page of `python demo.py`: draw on the pad (or pick a test image, or upload a picture), send it to
// POST /api/predict, draw what comes back; then the backward pass, im2col and the epoch slider (their own modules).
// Plain JavaScript modules, no framework and nothing from the internet, so it works offline for years.
// It only draws: every number comes from lenet's Python through the JSON API.
import { Backward } from "./backward.js";
import {
  api, clearError, diverging, el, grey, legend, paint, paintMaps, probabilityRows, ranged, rendered, showError,
  startAction, stats,
} from "./draw.js";
import { Epochs } from "./epochs.js";
import { Im2col } from "./im2col.js";

const pad = el("pad");
const ctx = pad.getContext("2d");
const sourceLine = el("source");

// What the panels share: the image the network sees (784 exact numbers from /api/predict), its true class when it
// is a test image (else null), and the class names.
const page = { pixels: null, label: null, classNames: [] };
const backward = new Backward(page, () => im2col.refresh());
const im2col = new Im2col(page, () => backward.target(), () => backward.session);
const epochs = new Epochs(page);

let padShowsPicture = false; // a test image or an upload is on the pad: the next stroke starts afresh

// -- the drawing pad ----------------------------------------------------------------------------------------

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
  delete sourceLine.dataset.index;
  page.label = null;
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
  startAction("stroke", ["forward", "backward", "im2col"]);
  submit(padRequest, true);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function padRequest() {
  return { image: pad.toDataURL("image/png") };
}

// -- the forward view: one request in flight at a time; the newest waiting request replaces older ones ---------
// A "full" request (a finished stroke, a test image, an upload) also updates the backward and im2col panels.

let inFlight = false;
let waiting = null;
let soonTimer = null;

function predictSoon() {
  // While drawing: at most one request every 40 ms (the answer follows the pen, the server is not flooded).
  if (soonTimer === null) {
    soonTimer = setTimeout(() => {
      soonTimer = null;
      submit(padRequest, false);
    }, 40);
  }
}

function submit(makeRequest, full) {
  if (inFlight) {
    waiting = { makeRequest, full: full || (waiting !== null && waiting.full) };
    return;
  }
  inFlight = true;
  api("/api/predict", makeRequest())
    .then(({ body, r }) => {
      renderForward(body, r);
      clearError();
      if (full) {
        page.pixels = body.pixels;
        backward.refresh();
        im2col.refresh();
      }
    })
    .catch(showError)
    .finally(() => {
      inFlight = false;
      if (waiting) {
        const next = waiting;
        waiting = null;
        submit(next.makeRequest, next.full);
      }
    });
}

function renderForward(answer, r) {
  const t0 = performance.now();
  probabilityRows(el("bars"), page.classNames, answer.probabilities, answer.predicted);
  const prediction = el("prediction");
  prediction.textContent = answer.predicted_name;
  prediction.dataset.class = String(answer.predicted);
  paint(el("input"), answer.input, grey, 28, 28);
  const [lo1, hi1] = answer.c1.range;
  const [lo3, hi3] = answer.c3.range;
  paintMaps(el("c1"), answer.c1.values, answer.c1.shape, ranged(lo1, hi1));
  paintMaps(el("c3"), answer.c3.values, answer.c3.shape, ranged(lo3, hi3));
  legend(el("maps-legend"), "viridis", Math.min(lo1, lo3), Math.max(hi1, hi3),
    `Each layer on its own scale: C1 ${lo1.toFixed(2)} to ${hi1.toFixed(2)}, C3 ${lo3.toFixed(2)} to ` +
    `${hi3.toFixed(2)}; dark: low output, yellow: high.`);
  paint(el("saliency"), answer.saliency, diverging(answer.saliency_scale), 28, 28);
  legend(el("saliency-legend"), "diverging", answer.saliency_scale, 0,
    "red: more ink here raises the answer's score; blue: lowers it. From lenet's own backward pass.");
  stats.responses += 1;
  document.body.dataset.responses = String(stats.responses);
  rendered("forward", r, t0);
}

// -- test images and uploads --------------------------------------------------------------------------------

function showOnPad(drawPicture) {
  clearPad();
  ctx.save();
  ctx.imageSmoothingEnabled = false;
  drawPicture();
  ctx.restore();
  padShowsPicture = true;
}

function showTestImage(query, action) {
  return api(`/api/test-image${query}`)
    .then(({ body }) => {
      const small = document.createElement("canvas");
      paint(small, body.pixels, grey, 28, 28);
      showOnPad(() => ctx.drawImage(small, 0, 0, pad.width, pad.height));
      sourceLine.textContent = `test image #${body.index} (true class: ${body.label_name})`;
      sourceLine.dataset.index = String(body.index);
      page.label = body.label;
      startAction(action, ["forward", "backward", "im2col"]);
      submit(() => ({ pixels: body.pixels }), true); // as the data set holds it: no preprocessing
    })
    .catch(showError);
}

el("random").addEventListener("click", () => showTestImage("", "test-image"));

el("upload").addEventListener("change", (event) => {
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
    delete sourceLine.dataset.index;
    page.label = null;
    startAction("upload", ["forward", "backward", "im2col"]);
    submit(() => ({ image: dataUrl }), true); // the server decodes and preprocesses it (or says why not)
  };
  reader.readAsDataURL(file);
  event.target.value = "";
});

el("clear").addEventListener("click", () => {
  clearPad();
  sourceLine.textContent = "Draw with the mouse, a pen or a finger.";
  delete sourceLine.dataset.index;
  page.label = null;
  startAction("clear", ["forward", "backward", "im2col"]);
  submit(padRequest, true);
});

// -- start: the first screen opens with a test image already through the network --------------------------------

clearPad();
api("/api/info")
  .then(({ body: info }) => {
    page.classNames = info.class_names;
    backward.setClasses(info.class_names);
    const acc = typeof info.val_acc === "number" ? info.val_acc.toFixed(4) : "?";
    el("meta").textContent =
      `checkpoint ${info.checkpoint} · ${info.dataset} · epoch ${info.epoch} · validation accuracy ${acc}`;
    el("about-data").textContent = info.about_data;
    el("lr").max = String(info.max_lr);
    el("im2col-batch").max = String(info.max_batch);
    if (info.train_batch_size) el("im2col-batch-hint").textContent = `(this run trained with N = ${info.train_batch_size})`;
    legend(el("input-legend"), "grey", 0, 1, "black: 0 (background), white: 1 (ink), as in the data set.");
    const about = el("about");
    about.textContent = `lenet ${info.lenet_version}: LeNet-5 written from scratch in NumPy, every gradient by hand. `;
    if (info.project_url) {
      const link = document.createElement("a");
      link.href = info.project_url;
      link.textContent = "The project";
      about.appendChild(link);
    }
    document.body.dataset.ready = "1";
    epochs.start();
    if (info.test_images > 0) return showTestImage("?index=0", "first-screen");
    startAction("first-screen", ["forward", "backward", "im2col"]);
    submit(padRequest, true);
    return null;
  })
  .catch((error) => showError(`cannot reach the server: ${error.message || error}`));
