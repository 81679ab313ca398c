// Training over time (GET /api/epochs, GET /api/epoch): the epoch slider over the served run folder's records.
// The page polls /api/epochs, so the epochs of a train.py run still writing there appear without a reload.
import {
  api, diverging, el, fmt, grey, legend, paint, paintMaps, paintTiles, probabilityRows, ranged, refreshPanel,
  showError, startAction, stats, unpack, viridis,
} from "./draw.js";

const LAYERS = ["c1", "c3", "f5", "f6", "f7"];
const COLOURS = { c1: "#1f77b4", c3: "#ff7f0e", f5: "#2ca02c", f6: "#d62728", f7: "#9467bd" };
const PROBE = 0; // the probe image: test image #0, the same at every epoch

export class Epochs {
  constructor(page) {
    this.page = page;
    this.count = 0;
    this.epochs = [];
    this.polling = false;
    this.current = null;
    stats.epochCounts = []; // each number of epochs the page has seen, in order: for the browser test
    el("epoch-slider").addEventListener("input", () => {
      startAction("epoch", ["epoch"]);
      this.show(Number(el("epoch-slider").value));
    });
  }

  start() {
    const asked = Number(new URLSearchParams(window.location.search).get("poll"));
    const every = Number.isFinite(asked) && asked >= 100 ? asked : 1000;
    this.poll();
    setInterval(() => this.poll(), every);
  }

  poll() {
    if (this.polling) return;
    this.polling = true;
    api("/api/epochs")
      .then(({ body }) => this.status(body))
      .catch(showError)
      .finally(() => { this.polling = false; });
  }

  status(s) {
    const panel = el("epochs-panel");
    panel.dataset.available = s.available ? "1" : "0";
    el("epochs-body").hidden = !s.available;
    const line = el("epochs-status");
    if (!s.available) {
      line.textContent = s.reason;
      return;
    }
    this.epochs = s.epochs;
    const n = s.epochs.length;
    line.textContent = `The run in ${s.run}: ${n} epoch${n === 1 ? "" : "s"} recorded (epoch 0 is the ` +
      "initialization). A train.py run still writing there adds its epochs here as they finish.";
    if (n === this.count) return;
    stats.epochCounts.push(n);
    const slider = el("epoch-slider");
    const atEnd = this.count === 0 || Number(slider.value) === this.count - 1;
    this.count = n;
    slider.max = String(n - 1);
    panel.dataset.epochs = String(n);
    if (el("epoch-follow").checked && atEnd) {
      slider.value = String(n - 1);
      startAction("epoch-new", ["epoch"]);
      this.show(n - 1);
    } else {
      this.curves();
    }
  }

  show(epoch) {
    refreshPanel(this, "epoch", `/api/epoch?epoch=${epoch}&index=${PROBE}`, undefined, (a) => this.render(a));
  }

  render(a) {
    this.current = a.epoch;
    const names = this.page.classNames;
    const rec = a.record;
    const acc = rec.val_acc === null ? "?" : rec.val_acc.toFixed(4);
    el("epoch-label").textContent = `epoch ${a.epoch} of ${this.count - 1}` +
      (a.epoch === 0 ? " (the initial weights)" : "") + ` · validation accuracy ${acc} · loss ${fmt(rec.val_loss)}`;
    el("epochs-panel").dataset.shownEpoch = String(a.epoch);
    el("probe-label").textContent = `(test image #${a.probe.index}, true class ${names[a.probe.label]}): ` +
      `at this epoch the network says ${names[a.predicted]}`;
    const probe = unpack(a.probe.pixels);
    paint(el("probe"), probe.values, grey, 28, 28);
    probabilityRows(el("epoch-bars"), names, a.probabilities, a.predicted);
    const c1 = unpack(a.filters.c1.weight);
    const c3 = unpack(a.filters.c3.weight);
    paintTiles(el("epoch-c1-filters"), c1.values, 1, 6, 5, 5, (r, c) => c * 25, diverging(a.filters.c1.scale));
    paintTiles(el("epoch-c3-filters"), c3.values, 6, 16, 5, 5, (r, c) => (c * 6 + r) * 25,
      diverging(a.filters.c3.scale));
    legend(el("epoch-filters-legend"), "diverging", a.filters.c3.scale, 0,
      `Filters: red positive weights, blue negative; C3 on this scale, C1 on its own (±${fmt(a.filters.c1.scale)}).`);
    const m1 = unpack(a.maps.c1.values);
    const m3 = unpack(a.maps.c3.values);
    paintMaps(el("epoch-c1"), m1.values, m1.shape, ranged(...a.maps.c1.range));
    paintMaps(el("epoch-c3"), m3.values, m3.shape, ranged(...a.maps.c3.range));
    legend(el("epoch-maps-legend"), "viridis", a.maps.c3.range[0], a.maps.c3.range[1],
      `Maps: dark low, yellow high; C3 on this scale, C1 from ${fmt(a.maps.c1.range[0])} to ` +
      `${fmt(a.maps.c1.range[1])}.`);
    paint(el("epoch-saliency"), unpack(a.saliency.values).values, diverging(a.saliency.scale), 28, 28);
    legend(el("epoch-saliency-legend"), "diverging", a.saliency.scale, 0,
      "Saliency: red, more ink raises the answer's score; blue lowers it.");
    this.confusion(rec.confusion, a.confusion_max, names);
    this.table(rec.layers);
    this.curves();
  }

  confusion(matrix, max, names) {
    const canvas = el("confusion");
    const cell = 26;
    const left = 92;
    const top = 18;
    canvas.width = left + 10 * cell;
    canvas.height = top + 10 * cell;
    const c = canvas.getContext("2d");
    c.clearRect(0, 0, canvas.width, canvas.height);
    c.font = "10px sans-serif";
    c.textAlign = "center";
    c.textBaseline = "middle";
    for (let j = 0; j < 10; j++) {
      c.fillStyle = "#1d2330";
      c.fillText(String(j), left + j * cell + cell / 2, top / 2);
    }
    for (let i = 0; i < 10; i++) {
      c.textAlign = "right";
      c.fillStyle = "#1d2330";
      c.fillText(`${names[i].slice(0, 12)} ${i}`, left - 4, top + i * cell + cell / 2);
      c.textAlign = "center";
      for (let j = 0; j < 10; j++) {
        const v = matrix[i][j];
        const [r, g, b] = viridis(max > 0 ? v / max : 0);
        c.fillStyle = `rgb(${r}, ${g}, ${b})`;
        c.fillRect(left + j * cell, top + i * cell, cell - 1, cell - 1);
        c.fillStyle = v / max > 0.6 ? "#000" : "#fff";
        c.fillText(String(v), left + j * cell + cell / 2, top + i * cell + cell / 2);
      }
    }
    canvas.lenetValues = matrix.flat();
    legend(el("confusion-legend"), "viridis", 0, max,
      "Rows: the true class; columns: the predicted class (0-9, as in the rows); each cell counts validation images.");
  }

  table(layers) {
    const t = el("layer-figures");
    t.innerHTML = "<tr><th>layer</th><th>|W|</th><th>|dL/dW|</th><th>mean |dL/dW|</th><th>saturated</th></tr>";
    for (const name of LAYERS) {
      const f = layers[name];
      const row = document.createElement("tr");
      row.dataset.layer = name;
      const cells = [name.toUpperCase(), fmt(f.weight_norm), fmt(f.grad_norm), fmt(f.grad_mean_abs),
        f.saturated === null ? "–" : `${(100 * f.saturated).toFixed(1)}%`];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        row.appendChild(td);
      }
      t.appendChild(row);
    }
  }

  // Accuracy over the epochs (left) and mean |dL/dW| per layer on a log scale (right); a line at the shown epoch.
  curves() {
    const canvas = el("epoch-curves");
    const w = 250;
    const h = 150;
    canvas.width = 2 * w + 20;
    canvas.height = h + 30;
    const c = canvas.getContext("2d");
    c.clearRect(0, 0, canvas.width, canvas.height);
    const n = this.epochs.length;
    const x = (e, x0) => x0 + 30 + (n > 1 ? (e * (w - 40)) / (n - 1) : 0);
    const frame = (x0, title) => {
      c.strokeStyle = "#999";
      c.strokeRect(x0 + 30, 10, w - 40, h - 20);
      c.fillStyle = "#1d2330";
      c.font = "11px sans-serif";
      c.fillText(title, x0 + 30, h + 5);
      if (this.current !== null) {
        c.strokeStyle = "#e07b00";
        c.beginPath();
        c.moveTo(x(this.current, x0), 10);
        c.lineTo(x(this.current, x0), h - 10);
        c.stroke();
      }
    };
    const line = (values, x0, y, colour) => {
      c.strokeStyle = colour;
      c.lineWidth = 1.5;
      c.beginPath();
      let started = false;
      values.forEach((v, e) => {
        if (v === null || !Number.isFinite(y(v))) return;
        if (started) c.lineTo(x(e, x0), y(v));
        else c.moveTo(x(e, x0), y(v));
        started = true;
      });
      c.stroke();
      c.lineWidth = 1;
    };
    frame(0, "accuracy: validation (black), training (grey)");
    const yAcc = (v) => 10 + (1 - v) * (h - 20);
    line(this.epochs.map((e) => e.val_acc), 0, yAcc, "#1d2330");
    line(this.epochs.map((e) => e.train_acc), 0, yAcc, "#999");
    c.fillStyle = "#5d6675";
    c.fillText("1", 18, 14);
    c.fillText("0", 18, h - 10);
    const grads = LAYERS.flatMap((l) => this.epochs.map((e) => e.layers[l].grad_mean_abs)).filter((v) => v > 0);
    const lo = Math.floor(Math.log10(Math.min(...grads, 1)));
    const hi = Math.ceil(Math.log10(Math.max(...grads, 1e-12)));
    const yLog = (v) => 10 + ((hi - Math.log10(v)) * (h - 20)) / Math.max(1, hi - lo);
    frame(w + 20, "mean |dL/dW| per layer (log)");
    for (const l of LAYERS) line(this.epochs.map((e) => e.layers[l].grad_mean_abs), w + 20, yLog, COLOURS[l]);
    c.fillStyle = "#5d6675";
    c.fillText(`1e${hi}`, w + 20, 14);
    c.fillText(`1e${lo}`, w + 20, h - 10);
    const note = el("epoch-curves-note");
    note.textContent = "";
    for (const l of LAYERS) {
      const span = document.createElement("span");
      span.className = "key";
      span.style.color = COLOURS[l];
      span.textContent = `■ ${l.toUpperCase()} `;
      note.appendChild(span);
    }
  }
}
