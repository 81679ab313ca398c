// im2col, seen (POST /api/im2col): a convolution as one matrix product, and col2im adding the windows back.
// Which input cell each entry of the im2col matrix reads comes from lenet's own im2col ("cells", "source"), and
// which column an output position is from the layer's own layout ("column"): this module only looks them up.
import {
  diverging, el, fmt, grey, legend, paintTiles, ranged, refreshPanel, startAction, timed, unpack,
} from "./draw.js";

// CSS pixels a value along each axis of the matrices: L (columns, output positions), K (rows of cols), F (filters).
const UNITS = { c1: { l: 1, k: 5, f: 8, input: 6, output: 3 }, c3: { l: 6, k: 2, f: 4, input: 5, output: 6 } };
const MARK = "rgba(255, 140, 0, 0.55)";
const LINE = "#ff8c00";

function radio(name) {
  return document.querySelector(`input[name="${name}"]:checked`).value;
}

// A small canvas of values, drawn crisp at (sx, sy) CSS pixels a value into `canvas`; marks go on top.
class Blown {
  constructor(canvas) {
    this.canvas = canvas;
    this.small = document.createElement("canvas");
  }

  draw(values, rows, cols, h, w, tile, colour, sx, sy) {
    paintTiles(this.small, values, rows, cols, h, w, tile, colour);
    this.sx = sx;
    this.sy = sy;
    this.tileH = h + 1;
    this.tileW = w + 1;
    this.redraw();
    this.canvas.lenetValues = values;
  }

  redraw() {
    const c = this.canvas;
    c.width = Math.round(this.small.width * this.sx);
    c.height = Math.round(this.small.height * this.sy);
    const g = c.getContext("2d");
    g.imageSmoothingEnabled = false;
    g.drawImage(this.small, 0, 0, c.width, c.height);
    return g;
  }

  // Mark value (y, x) of tile (tr, tc).
  mark(g, tr, tc, y, x, style = MARK) {
    g.fillStyle = style;
    g.fillRect((tc * this.tileW + x) * this.sx, (tr * this.tileH + y) * this.sy, this.sx, this.sy);
  }

  // Dim all but the values (x, y) to (x + w, y + h), and outline them: a row or a column of a matrix.
  spotlight(g, x, y, w, h) {
    const c = this.canvas;
    g.fillStyle = "rgba(255, 255, 255, 0.55)";
    g.fillRect(0, 0, c.width, y * this.sy);
    g.fillRect(0, (y + h) * this.sy, c.width, c.height - (y + h) * this.sy);
    g.fillRect(0, y * this.sy, x * this.sx, h * this.sy);
    g.fillRect((x + w) * this.sx, y * this.sy, c.width - (x + w) * this.sx, h * this.sy);
    this.outline(g, x, y, w, h);
  }

  outline(g, x, y, w, h) {
    g.strokeStyle = LINE;
    g.lineWidth = 2;
    g.strokeRect(x * this.sx - 1, y * this.sy - 1, w * this.sx + 2, h * this.sy + 2);
  }
}

export class Im2col {
  constructor(page, target, session) {
    this.page = page;
    this.target = target;
    this.session = session;
    this.view = null;
    this.input = new Blown(el("im2col-input"));
    this.cols = new Blown(el("im2col-cols"));
    this.weight = new Blown(el("im2col-weight"));
    this.product = new Blown(el("im2col-product"));
    this.coverage = new Blown(el("im2col-coverage"));
    for (const name of ["im2col-layer", "im2col-mode"]) {
      for (const input of document.querySelectorAll(`input[name="${name}"]`)) {
        input.addEventListener("change", () => {
          startAction(name, ["im2col"]);
          this.refresh();
        });
      }
    }
    el("im2col-batch").addEventListener("change", () => {
      startAction("im2col-batch", ["im2col"]);
      this.refresh();
    });
    el("im2col-output").addEventListener("mousemove", (event) => this.hoverOutput(event));
    el("im2col-input").addEventListener("mousemove", (event) => this.hoverInput(event));
  }

  refresh() {
    if (!this.page.pixels) return;
    const request = {
      pixels: this.page.pixels,
      layer: radio("im2col-layer"),
      batch: Number(el("im2col-batch").value),
      target: this.target(),
      session: this.session(),
    };
    refreshPanel(this, "im2col", "/api/im2col", request, (answer) => this.render(answer));
  }

  render(answer) {
    const v = { answer, mode: radio("im2col-mode"), units: UNITS[answer.layer] };
    for (const key of ["input", "cells", "source", "cols", "weight", "column", "output", "dout", "dcols", "dx",
      "coverage"]) v[key] = unpack(answer[key]);
    const [c, hp, wp] = v.input.shape;
    const [f, oh, ow] = v.output.shape;
    const [k, l] = v.cols.shape;
    Object.assign(v, { c, hp, wp, f, oh, ow, k, l });
    v.position = new Int32Array(l); // the output position (oh * OW + ow) of each column: column's inverse
    v.column.values.forEach((col, i) => { v.position[col] = i; });
    this.view = v;
    const u = v.units;
    const inputColour = answer.layer === "c1" ? grey : ranged(...answer.input_range);
    this.input.draw(v.input.values, 1, c, hp, wp, (r, t) => t * hp * wp, inputColour, u.input, u.input);
    this.drawOutputs();
    const backward = v.mode === "backward";
    const left = backward ? v.dcols : v.cols;
    const right = backward ? v.dout : v.output;
    const leftColour = backward ? diverging(answer.dcols_scale) : inputColour;
    const rightColour = diverging(backward ? answer.dout_scale : answer.output_scale);
    this.cols.draw(left.values, 1, 1, k, l, () => 0, leftColour, u.l, u.k);
    this.weight.draw(v.weight.values, 1, 1, f, k, () => 0, diverging(answer.weight_scale), u.k, u.f);
    this.product.draw(right.values, 1, 1, f, l, () => 0, rightColour, u.l, u.f);
    el("im2col-coverage-box").hidden = !backward;
    if (backward) {
      const [, h, w] = v.coverage.shape;
      const [lo, hi] = answer.coverage_range;
      this.coverage.draw(v.coverage.values, 1, c, h, w, (r, t) => t * h * w, ranged(lo, hi), u.input, u.input);
      legend(el("im2col-coverage-legend"), "viridis", lo, hi,
        "How many 5 x 5 windows cover each cell (col2im of a matrix of ones): that many entries of dcols add up there.");
    }
    this.titles(answer, backward);
    this.legends(answer, backward, inputColour === grey);
    if (backward) this.showCell(Math.floor(hp / 2) * wp + Math.floor(wp / 2));
    else this.showOutput(0, Math.floor(oh / 2), Math.floor(ow / 2));
  }

  drawOutputs() {
    const v = this.view;
    const box = el("im2col-output");
    const count = v.f;
    while (box.children.length > count) box.lastChild.remove();
    while (box.children.length < count) box.appendChild(document.createElement("canvas"));
    this.outputs = Array.from(box.children, (canvas) => new Blown(canvas));
    const values = v.mode === "backward" ? v.dout.values : v.output.values;
    const scale = v.mode === "backward" ? v.answer.dout_scale : v.answer.output_scale;
    this.outputs.forEach((blown, m) => {
      blown.canvas.dataset.map = String(m);
      blown.draw(values.subarray(m * v.oh * v.ow, (m + 1) * v.oh * v.ow), 1, 1, v.oh, v.ow, () => 0,
        diverging(scale), v.units.output, v.units.output);
    });
  }

  titles(answer, backward) {
    const s = answer.shapes;
    const shape = (a) => `(${a.join(", ")})`;
    const name = answer.layer.toUpperCase();
    el("im2col-input-title").textContent = answer.layer === "c1"
      ? `C1's input, zero-padded by ${answer.padding} (orange ring): ${this.view.hp} x ${this.view.wp}`
      : `C3's input: S2's 6 maps of 14 x 14`;
    el("im2col-output-title").textContent = backward
      ? `dout = dL/d(${name} output), ${this.view.f} maps: hover the input instead`
      : `${name}'s output (before the activation), ${this.view.f} maps: hover one`;
    el("cols-title").textContent = backward
      ? `dcols = Wᵀ @ dout ${shape([this.view.k, this.view.l])}`
      : `cols = im2col(x) ${shape([this.view.k, this.view.l])}: a column per output position`;
    el("weight-title").textContent = `W ${shape(s.weight)}: a row per filter`;
    el("product-title").textContent = backward
      ? `dout ${shape([this.view.f, this.view.l])}`
      : `W @ cols ${shape([this.view.f, this.view.l])}`;
    const n = answer.batch;
    el("im2col-shapes").textContent = backward
      ? `At batch N = ${n}: dout ${shape(s.product)}; dcols = Wᵀ ${shape(s.weight.slice().reverse())} @ dout ` +
        `${shape(s.product)} = ${shape(s.cols)}; col2im(dcols) -> dL/dx ${shape(s.x)}. ` +
        `dL/dW = dout @ colsᵀ = ${shape(s.weight)}.`
      : `At batch N = ${n}: x ${shape(s.x)} -> cols ${shape(s.cols)}; W ${shape(s.weight)} @ cols ` +
        `${shape(s.cols)} = ${shape(s.product)}, read as ${shape(s.out)}. Columns go in (OH, OW, N) order. ` +
        "Drawn below: this one image (N = 1).";
    el("im2col-shapes").dataset.cols = JSON.stringify(s.cols);
  }

  legends(answer, backward, inputIsGrey) {
    const box = el("im2col-legends");
    box.textContent = "";
    const add = (kind, a, b, meaning) => {
      const div = document.createElement("div");
      box.appendChild(div);
      legend(div, kind, a, b, meaning);
    };
    const what = backward ? "input" : "input and cols";
    if (inputIsGrey) add("grey", 0, 1, `${what}: the image's pixels, 0 black to 1 white.`);
    else add("viridis", ...answer.input_range, `${what}: S2's outputs, dark low, yellow high.`);
    add("diverging", answer.weight_scale, 0, "W: red positive weights, blue negative.");
    if (backward) {
      add("diverging", answer.dout_scale, 0, "dout: red, raising this output would raise the loss; blue, lower it.");
      add("diverging", answer.dcols_scale, 0, "dcols: each window's share of dL/dx, before col2im adds them up.");
    } else {
      add("diverging", answer.output_scale, 0, "output = W @ cols + bias: red positive, blue negative.");
    }
  }

  // Forward: the output of filter m at (y, x): its column of cols and row of W.
  hoverOutput(event) {
    const canvas = event.target;
    if (!this.view || this.view.mode !== "forward" || canvas.tagName !== "CANVAS") return;
    const t0 = performance.now();
    const u = this.view.units.output;
    const y = Math.min(this.view.oh - 1, Math.floor(event.offsetY / u));
    const x = Math.min(this.view.ow - 1, Math.floor(event.offsetX / u));
    this.showOutput(Number(canvas.dataset.map), y, x);
    timed("hover", t0);
  }

  showOutput(m, y, x) {
    const v = this.view;
    const col = v.column.values[y * v.ow + x];
    const gi = this.input.redraw();
    this.padding(gi);
    const cells = [];
    let padded = 0;
    for (let k = 0; k < v.k; k++) {
      const cell = v.cells.values[k * v.l + col];
      cells.push(cell);
      if (v.source.values[k * v.l + col] < 0) padded += 1;
      const ch = Math.floor(cell / (v.hp * v.wp));
      const rest = cell % (v.hp * v.wp);
      this.input.mark(gi, 0, ch, Math.floor(rest / v.wp), rest % v.wp);
    }
    this.outputs.forEach((blown, i) => {
      const g = blown.redraw();
      if (i === m) blown.outline(g, x, y, 1, 1);
    });
    this.cols.spotlight(this.cols.redraw(), col, 0, 1, v.k);
    this.weight.spotlight(this.weight.redraw(), 0, m, v.k, 1);
    this.product.spotlight(this.product.redraw(), col, m, 1, 1);
    const value = v.output.values[m * v.oh * v.ow + y * v.ow + x];
    el("im2col-readout").textContent =
      `Output of filter ${m} at row ${y}, column ${x} = W row ${m} · cols column ${col} + bias = ${fmt(value)}: ` +
      `a sum of ${v.k} products over the ${v.k} highlighted input cells` +
      (padded ? ` (${padded} of them in the zero padding).` : ".");
    const panel = el("im2col-panel");
    panel.dataset.highlighted = String(new Set(cells).size);
    panel.dataset.cells = cells.join(",");
    panel.dataset.column = String(col);
    panel.dataset.row = String(m);
  }

  // Backward: the input cell under the pointer, and every window (column of dcols) that adds to it.
  hoverInput(event) {
    if (!this.view || this.view.mode !== "backward") return;
    const t0 = performance.now();
    const v = this.view;
    const u = v.units.input;
    const gx = Math.floor(event.offsetX / u);
    const y = Math.min(v.hp - 1, Math.floor(event.offsetY / u));
    const ch = Math.min(v.c - 1, Math.floor(gx / (v.wp + 1)));
    const x = gx - ch * (v.wp + 1);
    if (x >= v.wp) return; // the gap between two maps
    this.showCell((ch * v.hp + y) * v.wp + x);
    timed("hover", t0);
  }

  showCell(cell) {
    const v = this.view;
    const entries = [];
    for (let i = 0; i < v.k * v.l; i++) if (v.cells.values[i] === cell) entries.push(i);
    const gi = this.input.redraw();
    this.padding(gi);
    const ch = Math.floor(cell / (v.hp * v.wp));
    const rest = cell % (v.hp * v.wp);
    this.input.outline(gi, ch * (v.wp + 1) + (rest % v.wp), Math.floor(rest / v.wp), 1, 1);
    const gc = this.cols.redraw();
    const go = this.outputs.map((blown) => blown.redraw());
    for (const i of entries) {
      const col = i % v.l;
      this.cols.mark(gc, 0, 0, Math.floor(i / v.l), col, "rgba(255, 140, 0, 0.9)");
      const pos = v.position[col];
      this.outputs.forEach((blown, m) => blown.mark(go[m], 0, 0, Math.floor(pos / v.ow), pos % v.ow));
    }
    this.weight.redraw();
    this.product.redraw();
    const source = entries.length ? v.source.values[entries[0]] : -1;
    const terms = entries.map((i, n) => {
      const t = v.dcols.values[i];
      return n === 0 ? fmt(t) : `${t < 0 ? "−" : "+"} ${fmt(Math.abs(t))}`;
    });
    const panel = el("im2col-panel");
    panel.dataset.cell = String(cell);
    panel.dataset.contributions = String(entries.length);
    const readout = el("im2col-readout");
    if (source < 0) {
      readout.textContent = `A padding cell: ${entries.length} windows cover it, and col2im adds their ` +
        `${entries.length} entries here too, then drops the padding: it is not part of the input.`;
      panel.dataset.dx = "";
      return;
    }
    const dx = v.dx.values[source];
    const what = v.answer.layer === "c1" ? "dL/dx" : "dL/d(S2 output)";
    readout.textContent = `${what} here = the sum of the ${entries.length} entries of dcols from the ` +
      `${v.coverage.values[source]} windows that cover this cell (marked in dcols and in dout): ` +
      `${terms.join(" ")} = ${fmt(dx)}.`;
    panel.dataset.dx = String(dx);
  }

  padding(g) {
    const p = this.view.answer.padding;
    if (!p) return;
    const { hp, wp } = this.view;
    for (let y = 0; y < hp; y++) {
      for (let x = 0; x < wp; x++) {
        if (y < p || x < p || y >= hp - p || x >= wp - p) this.input.mark(g, 0, 0, y, x, "rgba(255, 170, 60, 0.35)");
      }
    }
  }
}
