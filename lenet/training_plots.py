"""Pictures of a run over time, from its epoch records (lenet/records.py): what visualize.py adds beside its pictures
of one checkpoint.

- training.png: C1's six filters and one image's six C1 feature maps, at a few epochs (the initialization, the first
  epoch, one in the middle, the last), a row each, so that a column shows one filter, or its map, learning;
- gradient_flow.png: per learnable layer over the epochs, the size of the weight gradient on the probe batch (log
  scale) and the share of saturated units: in a sigmoid network the layers near the input get gradients many times
  smaller than the output layer's, and this shows how much.

Every number is from the records or from the model's own forward pass at that epoch's weights. Matplotlib's Figure,
never pyplot, as in lenet/visualize.py.
"""

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .errors import LenetError
from .plots import save_figure
from .records import LAYERS, epoch_model, read_records
from .visualize import layer_outputs, softmax

PICTURES = ("training.png", "gradient_flow.png")
LAYER_NAMES = {
    "c1": "C1 (convolution, next to the input)",
    "c3": "C3 (convolution)",
    "f5": "F5 (fully connected)",
    "f6": "F6 (fully connected)",
    "f7": "F7 (output layer)",
}
# What counts as a saturated unit (lenet/recorder.py's FLAT), in words for the picture.
FLAT_IN_WORDS = {
    "sigmoid": "saturated sigmoid units: output below 0.05 or above 0.95, where the slope is under 0.05",
    "tanh": "saturated tanh units: |output| above 0.9, where the slope is under 0.2",
    "relu": "ReLU units at zero: output exactly 0, where no gradient passes (at 0 on every image: dead)",
}
ACTIVATION_RANGE = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}  # ReLU's has no top: the largest output seen


def epochs_to_show(last, count=4):
    """The epochs training.png shows of a run recorded up to `last`: 0, 1, one in the middle and the last."""
    return sorted({0, min(1, last), (last + 1) // 2, last})[:count]


def draw_training(run_dir, image, source, out, backend="numpy"):
    """training.png and gradient_flow.png of the run in run_dir, drawn into folder `out`.

    image (1, 1, 28, 28): the image whose feature maps training.png shows (source: its caption). Returns (the paths
    written, None), or ([], why they were skipped) when the run keeps no epoch records or they cannot be read.
    """
    try:
        records = read_records(run_dir)
    except LenetError as e:
        return [], str(e)
    if records is None:
        return [], f"{run_dir} keeps no epoch records (trained before they existed, or with --no-epoch-records)"
    last = records["epochs"][-1]["epoch"]
    rows = []
    for epoch in epochs_to_show(last):
        model, _ = epoch_model(run_dir, epoch, backend=backend)
        outputs = layer_outputs(model, image)
        rows.append(
            {
                "epoch": epoch,
                "filters": model.state_dict()["c1.weight"][:, 0],  # (6, 5, 5)
                "maps": outputs["act1"][0],  # (6, 28, 28)
                "probs": softmax(outputs["f7"][0].astype(np.float64)),
                "val_acc": records["epochs"][epoch]["val_acc"],
            }
        )
    out = Path(out)
    plot_training(rows, outputs["input"][0, 0], source, records, out / PICTURES[0])
    plot_gradient_flow(records, out / PICTURES[1])
    return [out / name for name in PICTURES], None


def plot_training(rows, image, source, records, path):
    """A row per epoch: C1's filters (red and blue around 0, one scale per row), the image's C1 maps after the
    activation (one scale for all rows) and the class the network gives the image then, with its probability."""
    activation, names = records["activation"], records["class_names"]
    fig = Figure(figsize=(15, 1.75 * len(rows) + 1.6), layout="constrained")
    left, filters_fig, maps_fig, answer_fig = fig.subfigures(1, 4, width_ratios=[1.3, 6.2, 6.4, 2.4])
    ax = left.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"the image, the same\nin every row:\n{source}", fontsize=8)

    filter_axes = filters_fig.subplots(len(rows), 6, squeeze=False)
    for r, row in enumerate(rows):
        m = float(np.abs(row["filters"]).max()) or 1.0
        for i, ax in enumerate(filter_axes[r]):
            im = ax.imshow(row["filters"][i], cmap="RdBu_r", vmin=-m, vmax=m)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"filter {i}", fontsize=8)
        filter_axes[r, 0].set_ylabel(_epoch_label(row), fontsize=9)
        bar = filters_fig.colorbar(im, ax=filter_axes[r], shrink=0.9, aspect=8, pad=0.01)
        bar.ax.tick_params(labelsize=6)
    filters_fig.suptitle(
        "C1's 5x5 filters: red weights brighten the map where the image is bright, blue darken it\n"
        "(each row on its own scale, the bar at its right: the filters grow as they learn)",
        fontsize=9,
    )

    low, high = ACTIVATION_RANGE.get(activation, (0.0, max(float(row["maps"].max()) for row in rows) or 1.0))
    map_axes = maps_fig.subplots(len(rows), 6, squeeze=False)
    for r, row in enumerate(rows):
        for i, ax in enumerate(map_axes[r]):
            im = ax.imshow(row["maps"][i], cmap="viridis", vmin=low, vmax=high)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"map {i}", fontsize=8)
    maps_fig.colorbar(im, ax=map_axes, shrink=0.6, aspect=25, pad=0.01, label=f"{activation} output")
    maps_fig.suptitle(
        f"what each filter finds in the image: C1's maps after the {activation}\n"
        f"(yellow: the filter's pattern is there, dark: {'cut to 0' if activation == 'relu' else 'its opposite'}; "
        "one scale for every row)",
        fontsize=9,
    )

    answer_axes = answer_fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, row in zip(answer_axes, rows, strict=True):
        top = np.argsort(row["probs"])[::-1][:3]
        ax.barh(range(3), row["probs"][top], color=["tab:orange", "tab:gray", "tab:gray"])
        ax.set_yticks(range(3), [names[k] for k in top], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
        for k, p in enumerate(row["probs"][top]):
            ax.text(min(p, 0.7) + 0.02, k, f"{p:.2f}", va="center", fontsize=7)
    answer_axes[-1].set_xlabel("probability", fontsize=8)
    answer_fig.suptitle("the network's answer:\nits three likeliest classes", fontsize=9)
    fig.suptitle(f"Watch LeNet-5 learn: C1 at {len(rows)} moments of training (a row each)", fontsize=12)
    save_figure(fig, path)


def _epoch_label(row):
    if row["epoch"] == 0:
        return "epoch 0\n(initial\nrandom weights)"
    return f"after epoch {row['epoch']}\n(val acc {row['val_acc']:.2f})"


def plot_gradient_flow(records, path):
    """Per layer over the epochs: mean |dL/dW| on the probe batch (log scale), the share of saturated units, and the
    weights' size against their initial size."""
    epochs = [r["epoch"] for r in records["epochs"]]
    activation, count = records["activation"], records["probe"]["count"]
    colours = dict(zip(LAYERS, colormaps["plasma"](np.linspace(0.0, 0.85, len(LAYERS))), strict=True))  # dark: input

    def series(layer, figure):
        values = [r["layers"][layer][figure] for r in records["epochs"]]
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def draw(ax, layers, values):
        for layer in layers:
            ax.plot(epochs, values(layer), "o-", color=colours[layer], label=LAYER_NAMES[layer], ms=4)
        ax.set_xlabel("epoch (0: the initial random weights)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both")

    fig = Figure(figsize=(16, 5.6), layout="constrained")
    ax_grad, ax_flat, ax_size = fig.subplots(1, 3, width_ratios=[1.25, 1, 1])
    draw(
        ax_grad,
        LAYERS,
        lambda layer: np.where(series(layer, "grad_mean_abs") > 0, series(layer, "grad_mean_abs"), np.nan),
    )
    ax_grad.set_yscale("log")
    ax_grad.set_ylabel("mean |dL/dW| per weight (log scale)")
    first, last = records["epochs"][0], records["epochs"][-1]
    ratios = [
        f"{ratio:.3g}x C1's {_label(r['epoch'])}"
        for r in ((first, last) if last is not first else (first,))
        if (ratio := _ratio(r["layers"]["f7"]["grad_mean_abs"], r["layers"]["c1"]["grad_mean_abs"])) is not None
    ]
    ax_grad.set_title(
        "Gradient size: how hard each layer's weights are pushed\n"
        + (f"(F7's is {', '.join(ratios)})" if ratios else ""),
        fontsize=10,
    )

    draw(ax_flat, LAYERS[:-1], lambda layer: 100 * series(layer, "saturated"))  # F7 has no activation
    ax_flat.set_ylim(-2, 102)
    ax_flat.set_ylabel("% of the layer's units, on the probe images")
    what, where = FLAT_IN_WORDS[activation].split(": ", 1)
    ax_flat.set_title(f"Share of {what}\n({where})", fontsize=10)

    draw(ax_size, LAYERS, lambda layer: series(layer, "weight_norm") / series(layer, "weight_norm")[0])
    ax_size.axhline(1, color="0.5", lw=0.8)
    ax_size.set_ylabel("L2 norm of the weights / at epoch 0")
    ax_size.set_title("How far the weights have grown from their initial size", fontsize=10)

    handles, labels = ax_grad.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=len(LAYERS), fontsize=9, title="layer, input to output"
    )
    fig.suptitle(
        f"Gradient flow in LeNet-5 ({activation}), measured after each epoch on the same {count} validation images",
        fontsize=12,
    )
    save_figure(fig, path)


def _label(epoch):
    return "at the start" if epoch == 0 else f"after epoch {epoch}"


def _ratio(a, b):
    return a / b if a is not None and b else None
