// The backward pass, step by step (POST /api/backward), and one SGD step on a private copy (POST /api/sgd-step).
// Every number comes from lenet's Python; this module only lays the answer out, F7 first, C1 last.
import {
  api, diverging, el, fmt, legend, paint, paintMaps, paintTiles, probabilityRows, refreshPanel, showError,
  signedBars, startAction, unpack,
} from "./draw.js";

const GRAD_MEANING = "red: raising this number would raise the loss; blue: would lower it.";
const WEIGHT_MEANING = "red: positive weight; blue: negative.";
const WGRAD_MEANING = "red: dL/dw > 0, the step lowers this weight; blue: the step raises it.";
const DERIVATIVE = { sigmoid: "y(1 − y), at most 1/4", tanh: "1 − y², at most 1", relu: "1 where z > 0, else 0" };

// The stages from the loss back to the image: [layer name, caption] of the gradients drawn, and the parameters.
function stages(act) {
  const after = (what) => `dL/d(${what} output, after the ${act})`;
  const before = (what) => `dL/d(${what} output, before the ${act}) = the above × ${DERIVATIVE[act]}`;
  return [
    { title: "F7 · linear 84 → 10: the logits", grads: [["f7", "dL/d(logits) = softmax − one-hot(target)"]],
      param: "f7", note: "The start of the backward pass: the probabilities minus 1 at the target class." },
    { title: `F6 · linear 120 → 84, ${act}`, grads: [["act6", after("F6")], ["f6", before("F6")]], param: "f6",
      note: "F7's backward: dL/d(its input) = dL/d(logits) · W7; dL/dW7 = dL/d(logits)ᵀ · (its input)." },
    { title: `F5 · linear 400 → 120, ${act}`, grads: [["act5", after("F5")], ["f5", before("F5")]], param: "f5" },
    { title: "S4 · 2 x 2 pooling: 16 maps of 5 x 5", grads: [["s4", "dL/d(S4 output): F5's input, unflattened"]],
      note: "Average pooling's backward hands each output's gradient to its 4 inputs, a quarter each." },
    { title: `C3 · convolution 6 → 16, 5 x 5, ${act}`, grads: [["act3", after("C3")], ["c3", before("C3")]],
      param: "c3" },
    { title: "S2 · 2 x 2 pooling: 6 maps of 14 x 14", grads: [["s2", "dL/d(S2 output): C3's backward, col2im"]] },
    { title: `C1 · convolution 1 → 6, 5 x 5, ${act}`, grads: [["act1", after("C1")], ["c1", before("C1")]],
      param: "c1" },
    { title: "The input image", grads: [["input", "dL/dx: which pixels, made brighter, would raise the loss"]] },
  ];
}

const MAP_SIZES = { s4: 30, act3: 40, c3: 40, s2: 52, act1: 66, c1: 66, input: 112 };
// How a weight matrix is drawn: pixels a value (CSS), and for the filters how the tiles lie.
const WEIGHT_SCALES = { f7: 4, f6: 2.5, f5: 1.2, c3: 3.4, c1: 9 };

function drawWeights(canvas, name, packed) {
  const { shape, values } = packed;
  const s = WEIGHT_SCALES[name];
  return (colour) => {
    if (shape.length === 2) {
      paint(canvas, values, colour, shape[1], shape[0]); // (out, in): a row per output unit
    } else {
      const [f, c] = shape; // (F, C, 5, 5): C rows (input maps) of F filters, as visualize.py draws them
      paintTiles(canvas, values, c, f, 5, 5, (r, col) => (col * c + r) * 25, colour);
    }
    canvas.style.width = `${canvas.width * s}px`;
    canvas.style.height = `${canvas.height * s}px`;
  };
}

export class Backward {
  constructor(page, onWeightsChanged) {
    this.page = page;
    this.onWeightsChanged = onWeightsChanged;
    this.session = null;
    this.steps = 0;
    this.drawnWeights = null; // "session:steps" of the weights on the page
    this.built = false;
    el("target").addEventListener("change", () => {
      startAction("target", ["backward", "im2col"]);
      this.refresh();
      this.onWeightsChanged();
    });
    el("sgd-step").addEventListener("click", () => this.step());
    el("sgd-reset").addEventListener("click", () => this.reset());
  }

  setClasses(names) {
    const select = el("target");
    select.textContent = "";
    const auto = document.createElement("option");
    auto.value = "auto";
    auto.textContent = "the true class of a test image, else the predicted one";
    select.appendChild(auto);
    names.forEach((name, k) => {
      const option = document.createElement("option");
      option.value = String(k);
      option.textContent = `${k}: ${name}`;
      select.appendChild(option);
    });
  }

  // The class the loss is taken against: the one picked, else the test image's true class, else null (predicted).
  target() {
    const v = el("target").value;
    return v === "auto" || v === "" ? this.page.label : Number(v);
  }

  request(extra = {}) {
    return { pixels: this.page.pixels, target: this.target(), session: this.session, ...extra };
  }

  refresh() {
    if (!this.page.pixels) return;
    // The weights change only with a step: those drawn already are not sent again.
    const weights = this.drawnWeights !== `${this.session}:${this.steps}`;
    refreshPanel(this, "backward", "/api/backward", this.request({ weights }), (view) => this.render(view));
  }

  step() {
    if (!this.page.pixels) return;
    startAction("sgd-step", ["backward", "im2col"]);
    refreshPanel(this, "backward", "/api/sgd-step", this.request({ lr: Number(el("lr").value) }), (answer) => {
      this.session = answer.session;
      this.showStep(answer);
      this.render(answer);
      this.onWeightsChanged();
    });
  }

  reset() {
    startAction("sgd-reset", ["backward", "im2col"]);
    const session = this.session;
    this.session = null;
    this.steps = 0;
    el("sgd-result").hidden = true;
    this.refresh(); // the served weights again, at once: the reset only frees the copy on the server
    this.onWeightsChanged();
    if (session !== null) api("/api/sgd-reset", { session }).catch(showError);
  }

  showStep(answer) {
    const box = el("sgd-result");
    box.hidden = false;
    const rows = el("sgd-bars");
    const names = this.page.classNames;
    probabilityRows(rows, names, answer.after.probabilities, answer.target, "after");
    answer.before.probabilities.forEach((p, k) => {
      const row = rows.children[k];
      row.dataset.before = String(p);
      let fill = row.querySelector(".before-fill");
      if (!fill) {
        fill = document.createElement("span");
        fill.className = "before-fill";
        row.querySelector(".bar-track").prepend(fill);
      }
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      const after = answer.after.probabilities[k];
      row.querySelector(".bar-value").textContent = `${(100 * p).toFixed(1)} → ${(100 * after).toFixed(1)}%`;
    });
    const loss = el("sgd-loss");
    loss.textContent = `step ${answer.steps} with lr ${answer.lr}: the loss for ${names[answer.target]} went from ` +
      `${fmt(answer.before.loss)} to ${fmt(answer.after.loss)}. Grey: before the step; orange: after.`;
    loss.dataset.before = String(answer.before.loss);
    loss.dataset.after = String(answer.after.loss);
  }

  render(view) {
    if (!this.built) this.build(view);
    const names = this.page.classNames;
    const loss = el("loss");
    loss.textContent = `loss L = −log p(${view.target_name}) = ${fmt(view.loss)}  ·  predicted: ` +
      `${view.predicted_name} (${(100 * view.probabilities[view.predicted]).toFixed(1)}%)`;
    loss.dataset.value = String(view.loss);
    loss.dataset.target = String(view.target);
    el("weights-state").textContent = view.session
      ? `weights: this page's private copy after ${view.steps} step${view.steps === 1 ? "" : "s"}`
      : "weights: the served checkpoint";
    el("weights-state").dataset.steps = String(view.steps);
    if (view.session === this.session) this.steps = view.steps;
    const grads = {};
    for (const layer of view.layers) grads[layer.name] = layer;
    if (view.input_grad) grads.input = view.input_grad;
    for (const figure of document.querySelectorAll("#chain figure[data-layer]")) {
      const g = grads[figure.dataset.layer];
      if (!g) continue;
      const { shape, values } = unpackCached(g.grad);
      const canvas = figure.querySelector("canvas");
      const box = figure.querySelector(".maps");
      if (shape.length === 1) {
        signedBars(canvas, values, g.scale, figure.dataset.layer === "f7" ? names : null);
      } else {
        const maps = shape.length === 2 ? [1, ...shape] : shape;
        paintMaps(box, values, maps, diverging(g.scale), MAP_SIZES[figure.dataset.layer]);
      }
      legend(figure.querySelector(".legend-box"), "diverging", g.scale, 0, GRAD_MEANING);
    }
    for (const figure of document.querySelectorAll("#chain figure[data-param]")) {
      const [name, key] = figure.dataset.param.split(".");
      const p = view.params[name];
      if (!(key in p)) continue; // weights not sent: those drawn are still the ones
      const isGrad = key === "weight_grad";
      const scale = isGrad ? p.grad_scale : p.weight_scale;
      drawWeights(figure.querySelector("canvas"), name, unpackCached(p[key]))(diverging(scale));
      legend(figure.querySelector(".legend-box"), "diverging", scale, 0, isGrad ? WGRAD_MEANING : WEIGHT_MEANING);
    }
    if ("weight" in view.params.f7) this.drawnWeights = `${view.session}:${view.steps}`;
    this.sizes(view.sizes);
  }

  // Log-scale bars of the gradient sizes per layer, F7 first.
  sizes(sizes) {
    for (const [id, key] of [["sizes-weights", "grad_mean_abs"], ["sizes-outputs", "output_grad_mean_abs"]]) {
      const values = sizes.map((s) => s[key]);
      const logs = values.filter((v) => v > 0).map(Math.log10);
      const lo = Math.floor(Math.min(...logs, 0) - 0.5);
      const hi = Math.ceil(Math.max(...logs, lo + 1));
      const chart = el(id);
      chart.textContent = "";
      sizes.forEach((s, i) => {
        const row = document.createElement("div");
        row.className = "size-row";
        row.dataset.layer = s.layer;
        row.dataset.value = String(values[i]);
        const width = values[i] > 0 ? Math.max(1, (100 * (Math.log10(values[i]) - lo)) / (hi - lo)) : 0;
        row.innerHTML = '<span class="bar-name"></span><span class="bar-track"><span class="bar-fill"></span></span>' +
          '<span class="bar-value"></span>';
        row.querySelector(".bar-name").textContent = s.layer.toUpperCase();
        row.querySelector(".bar-fill").style.width = `${width.toFixed(1)}%`;
        row.querySelector(".bar-value").textContent = fmt(values[i]);
        chart.appendChild(row);
      });
      const axis = document.createElement("div");
      axis.className = "size-axis";
      axis.textContent = `axis: 1e${lo} to 1e${hi}`;
      chart.appendChild(axis);
    }
  }

  build(view) {
    const chain = el("chain");
    chain.textContent = "";
    const shapes = {};
    for (const layer of view.layers) shapes[layer.name] = layer.grad.shape;
    for (const stage of stages(view.activation)) {
      const row = document.createElement("div");
      row.className = "stage";
      const head = document.createElement("div");
      head.className = "stage-head";
      head.innerHTML = "<h3></h3><p class='note'></p>";
      head.querySelector("h3").textContent = stage.title;
      head.querySelector("p").textContent = stage.note || "";
      row.appendChild(head);
      const gradBox = document.createElement("div");
      gradBox.className = "stage-grads";
      for (const [name, caption] of stage.grads) {
        const shape = name === "input" ? [28, 28] : shapes[name];
        const kind = shape.length === 1 ? "canvas class='bars'" : "div class='maps'";
        gradBox.appendChild(figure(`data-layer="${name}"`, `${caption} (${shape.join(" x ")})`,
          `<${kind}></${kind.split(" ")[0]}>`));
      }
      row.appendChild(gradBox);
      if (stage.param) {
        const paramBox = document.createElement("div");
        paramBox.className = "stage-params";
        const shape = view.params[stage.param].weight.shape.join(" x ");
        paramBox.appendChild(figure(`data-param="${stage.param}.weight"`, `${stage.param.toUpperCase()} weights W (${shape})`,
          "<canvas class='weights'></canvas>"));
        const rule = stage.param.startsWith("f")
          ? "dL/dW = doutᵀ · (the layer's input): for one image, each row is the input times one output's gradient"
          : "dL/dW = dout @ colsᵀ: each filter's gradient sums its windows of the input, weighted by dout";
        paramBox.appendChild(figure(`data-param="${stage.param}.weight_grad"`, rule,
          "<canvas class='weights'></canvas>"));
        row.appendChild(paramBox);
      }
      chain.appendChild(row);
    }
    this.built = true;
  }
}

function figure(attribute, caption, inner) {
  const wrap = document.createElement("div");
  wrap.innerHTML = `<figure ${attribute}><figcaption></figcaption>${inner}<div class="legend-box"></div></figure>`;
  wrap.querySelector("figcaption").textContent = caption;
  return wrap.firstChild;
}

// Packed arrays decoded once per answer object.
const decoded = new WeakMap();
function unpackCached(packed) {
  if (!decoded.has(packed)) decoded.set(packed, unpack(packed));
  return decoded.get(packed);
}
