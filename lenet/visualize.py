"""Looking inside a trained LeNet-5: what each layer computes for an image, which pixels the answer depends
on, where the network is wrong, and how its last hidden layer arranges the test set.

Every number comes from lenet's own forward and backward passes. The functions here compute arrays
(NumPy, on the host) and the plot_* functions draw them with matplotlib's object-oriented Figure, never
pyplot, so a notebook's backend and open figures stay as they are. Pictures are written atomically.

Shapes: N images, 1 x 28 x 28 each; pixel values in [0, 1], ink bright on a dark background, as in the data sets.
"""

import io
import warnings

import numpy as np
from matplotlib.figure import Figure

from .backend import to_numpy
from .errors import LenetError
from .plots import save_figure

SIZE = 28  # the data sets' image side
MAX_IMAGE_PIXELS = 25_000_000  # a 5000 x 5000 photo; a file that claims more is refused before it is decoded

# How each data set's images were made, so a drawing or a photo can be made the same way.
# MNIST (LeCun et al.): the digit scaled into a 20x20 box, keeping its aspect ratio, then placed in the
# 28x28 field with its centre of mass at the centre. Fashion-MNIST (Xiao et al. 2017): the product
# trimmed, its longest side resized to 28, and centred.
PREPROCESSING = {"mnist": (20, "mass"), "fashion-mnist": (28, "box")}


def preprocessing_for(dataset):
    """(box, centring) for a data set's name; MNIST's rule for any other."""
    return PREPROCESSING.get(dataset, PREPROCESSING["mnist"])


# -- images from files ----------------------------------------------------------------------------


def decode_image(data, source="image"):
    """Bytes of a PNG, JPEG, ... -> (H, W) float32 grey in [0, 1] (0 black), transparent parts white.

    The pixel count in the file's header is checked before any pixel is decoded, so a small file that
    claims a huge image (a decompression bomb) costs nothing.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise LenetError(
                        f"{source} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} pixels are accepted"
                    )
                img.seek(0)  # the first frame of an animation
                if "A" in img.getbands() or img.mode == "P" and "transparency" in img.info:
                    rgba = img.convert("RGBA")
                    img = Image.new("RGBA", rgba.size, "white")
                    img.alpha_composite(rgba)
                grey = np.asarray(img.convert("L"), dtype=np.float32)
    except LenetError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise LenetError(f"{source} is not an image that can be read ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated or corrupt data inside a known format
        raise LenetError(f"{source} is not an image that can be read ({type(e).__name__}: {e})") from None
    if grey.ndim != 2 or grey.size == 0:
        raise LenetError(f"{source} holds no pixels")
    return grey / np.float32(255)


def read_image(path):
    """An image file -> (H, W) float32 grey in [0, 1]."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 * 1024 + 1)
    except OSError as e:
        raise LenetError(f"--image {path}: {e.strerror or e}") from None
    if len(data) > 64 * 1024 * 1024:
        raise LenetError(f"--image {path}: larger than 64 MiB")
    return decode_image(data, source=f"--image {path}")


def _resize(a, height, width):
    """Resize a float image with Pillow's Lanczos filter (antialiased when shrinking), clipped to [0, 1]."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    out = np.asarray(img.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32)
    return np.clip(out, 0, 1)


def to_dataset_image(grey, box=20, centring="mass"):
    """Make any grey picture look like a data-set image: (H, W) in [0, 1] -> (28, 28) float32.

    1. Dark ink on a light background (most photos and drawings) is inverted: the data sets have bright
       ink on black. The background is the median of the border pixels.
    2. The background level becomes 0 and the brightest ink 1.
    3. The ink's bounding box is scaled, keeping its aspect ratio, so that its longer side is `box` pixels.
    4. It is placed in the 28x28 field: by its centre of mass ("mass", MNIST) or its box ("box").
    A picture with no ink gives an all-zero image.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise LenetError(f"expected a grey image of shape (H, W), got {grey.shape}")
    if not np.all(np.isfinite(grey)):
        raise LenetError("the image has values that are not finite numbers")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = 1 - grey if np.median(border) > 0.5 else grey
    background = float(np.median(np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])))
    ink = ink - background
    peak = float(ink.max())
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    if peak < 0.05:  # nothing drawn
        return out
    ink = np.clip(ink / peak, 0, 1)
    rows, cols = np.nonzero(ink > 0.1)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = ink.shape
    scale = box / max(h, w)
    h2, w2 = max(1, min(box, round(h * scale))), max(1, min(box, round(w * scale)))
    small = _resize(ink, h2, w2)
    if small.max() > 0:
        small /= small.max()
    if centring == "mass" and small.sum() > 0:
        ys, xs = np.indices(small.shape)
        cy, cx = (small * ys).sum() / small.sum(), (small * xs).sum() / small.sum()
        top, left = round(SIZE / 2 - 0.5 - cy), round(SIZE / 2 - 0.5 - cx)
    else:
        top, left = (SIZE - h2) // 2, (SIZE - w2) // 2
    top, left = min(max(top, 0), SIZE - h2), min(max(left, 0), SIZE - w2)  # the whole box stays inside
    out[top : top + h2, left : left + w2] = small
    return out


# -- what the network computes ----------------------------------------------------------------------


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _as_model_input(model, images):
    """(N, 1, 28, 28) or (N, 28, 28) host or device array -> the model's array module and dtype."""
    x = model.xp.asarray(images, dtype=model.dtype)
    if x.ndim == 3:
        x = x[:, None]
    return x


def layer_outputs(model, images):
    """Every layer's output for a batch: {name: NumPy array}, in the network's order.

    Names are those of the model's layers ("c1", "act1", "s2", "c3", ..., "f7") and "input", so "f7" equals
    model.forward(images). Runs the model's layers, so not concurrently with another forward on the same model.
    """
    x = _as_model_input(model, images)
    model.check_input(x)
    out = {"input": to_numpy(x).copy()}
    for name, layer in model.layers:
        x = layer.forward(x)
        out[name] = to_numpy(x).copy()
    return out


def predict(model, images, batch_size=500, features="act6"):
    """(probabilities (N, 10), features (N, ...)) for many images, in batches: the output of the layer named
    `features` (F6 after its activation by default) and softmax of the logits, both NumPy float64."""
    x_all = images
    probs, feats = [], []
    for start in range(0, len(x_all), batch_size):
        x = _as_model_input(model, x_all[start : start + batch_size])
        model.check_input(x)
        kept = None
        for name, layer in model.layers:
            x = layer.forward(x)
            if name == features:
                kept = to_numpy(x).astype(np.float64)
        if kept is None:
            raise LenetError(f"the model has no layer named {features!r}")
        probs.append(softmax(to_numpy(x).astype(np.float64)))
        feats.append(kept)
    if not probs:
        return np.zeros((0, 10)), np.zeros((0, 0))
    return np.concatenate(probs), np.concatenate(feats)


def saliency(model, images, classes=None):
    """d(logit of a class)/d(pixels) by lenet's backward pass: (gradients (N, 28, 28), logits (N, 10)).

    `classes` (N,) picks the logit of each image (default: the predicted class). The model must have been
    built with input_grad=True, so that its first convolution computes the input gradient.
    """
    _check_input_grad(model)
    x = _as_model_input(model, images)
    logits = model.forward(x)
    chosen = logits.argmax(axis=1) if classes is None else classes
    logits_host = to_numpy(logits).copy()  # before backward: the next forward may reuse this memory
    return _pixel_gradients(model, logits, chosen), logits_host


def saliency_and_outputs(model, images):
    """saliency's (gradients, logits) of the predicted classes and layer_outputs' {name: output}, from one forward
    pass: the backward runs on the caches that layer_outputs' forward left."""
    _check_input_grad(model)
    outputs = layer_outputs(model, images)
    logits = outputs["f7"]  # a host copy: the backward does not touch it
    return _pixel_gradients(model, logits, logits.argmax(axis=1)), logits, outputs


def _check_input_grad(model):
    if not model.input_grad:
        raise LenetError("saliency needs a model built with input_grad=True")


def _pixel_gradients(model, logits, chosen):
    """The backward pass of a one-hot upstream gradient on the chosen logit of each image (chosen (N,), logits
    (N, classes) of the forward pass whose caches it runs on): d(logit)/d(pixels) (N, 28, 28)."""
    xp = model.xp
    dlogits = (xp.arange(logits.shape[1])[None, :] == xp.asarray(chosen)[:, None]).astype(logits.dtype)  # one-hot
    grad = model.backward(dlogits)  # (N, 1, 28, 28)
    return to_numpy(grad)[:, 0].copy()


def most_confident_mistakes(probs, labels, count=16):
    """Indices of the wrongly classified images, the most confident first (at most `count`)."""
    predicted = probs.argmax(axis=1)
    wrong = np.nonzero(predicted != labels)[0]
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order[:count]]


def pca(features, components=2):
    """Project (N, D) features on their first principal components (SVD of the centred data).

    Returns (projected (N, components), explained variance ratio (components,)). Each component's sign is
    fixed so that its largest loading is positive, so the picture does not flip between runs.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise LenetError(f"PCA needs at least two feature vectors (N, D), got shape {x.shape}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:components]
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    variance = s**2
    ratio = variance[:components] / variance.sum() if variance.sum() > 0 else np.zeros(len(vt))
    return centred @ vt.T, ratio


# -- pictures -----------------------------------------------------------------------------------------


def _symmetric(a):
    """A colour limit symmetric about zero (never 0, so a constant-zero panel still draws)."""
    m = float(np.abs(a).max()) if np.size(a) else 0.0
    return m if m > 0 else 1.0


def plot_filters(state, path):
    """C1's six 5x5 filters and C3's 16x6 grid of 5x5 filters, each layer on one colour scale around 0.

    Returns the Figure.
    """
    c1, c3 = np.asarray(state["c1.weight"]), np.asarray(state["c3.weight"])  # (6, 1, 5, 5), (16, 6, 5, 5)
    fig = Figure(figsize=(11, 6.9), layout="constrained")
    fig.suptitle("the learned weights: red a positive weight, blue a negative one, white zero", fontsize=12)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.1, 4.4])
    weight_label = "weight"
    m1 = _symmetric(c1)
    axes = top.subplots(1, len(c1))
    for i, ax in enumerate(axes):
        im = ax.imshow(c1[i, 0], cmap="RdBu_r", vmin=-m1, vmax=m1)
        ax.set_title(f"filter {i}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    top.colorbar(im, ax=axes, shrink=0.9, ticks=[-m1, 0, m1], format="{x:.2g}", label=weight_label)
    top.suptitle(f"C1: {c1.shape[0]} filters of {c1.shape[2]}x{c1.shape[3]} over the input image", fontsize=11)
    m3 = _symmetric(c3)
    grid = bottom.subplots(c3.shape[1], c3.shape[0], gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for out_map in range(c3.shape[0]):
        for in_map in range(c3.shape[1]):
            ax = grid[in_map, out_map]
            im = ax.imshow(c3[out_map, in_map], cmap="RdBu_r", vmin=-m3, vmax=m3)
            ax.set_xticks([]), ax.set_yticks([])
            if in_map == 0:
                ax.set_title(str(out_map), fontsize=9)
            if out_map == 0:
                ax.set_ylabel(f"S2 map {in_map}", fontsize=9, rotation=0, ha="right", va="center")
    bottom.colorbar(im, ax=grid, shrink=0.8, ticks=[-m3, 0, m3], format="{x:.2g}", label=weight_label)
    bottom.suptitle(
        f"C3: {c3.shape[0]} filters (columns), each {c3.shape[2]}x{c3.shape[3]} over every one of the "
        f"{c3.shape[1]} S2 maps (rows)",
        fontsize=11,
    )
    save_figure(fig, path)
    return fig


def _map_grid(subfig, maps, title, cmap="viridis", columns=8):
    """(C, H, W) maps on one colour scale in a grid, under one title, with a labelled colour bar."""
    c = len(maps)
    cols = min(columns, c)
    rows = -(-c // cols)
    axes = subfig.subplots(rows, cols, squeeze=False)
    lo, hi = float(maps.min()), float(maps.max())
    if hi <= lo:
        hi = lo + 1
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if i < c:
            im = ax.imshow(maps[i], cmap=cmap, vmin=lo, vmax=hi)
        else:
            ax.set_axis_off()
    subfig.colorbar(im, ax=axes, shrink=0.8, aspect=30, label="value (one scale for all maps here)")
    subfig.suptitle(title, fontsize=9)


def plot_feature_maps(outputs, class_names, path, source=""):
    """One image through the network: the input, C1, S2, C3, S4, F5 and F6 as bars, the probabilities.

    outputs: layer_outputs(...) of one image (each array with a batch axis of 1). Returns the Figure.
    """
    first = {k: v[0] for k, v in outputs.items()}
    probs = softmax(first["f7"].astype(np.float64))
    fig = Figure(figsize=(12, 12.5), layout="constrained")
    upper, middle, lower = fig.subfigures(3, 1, height_ratios=[2.2, 3.3, 2.6])
    left, c1_fig, s2_fig = upper.subfigures(1, 3, width_ratios=[1, 1.6, 1.6])
    ax = left.subplots()
    ax.imshow(first["input"][0], cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"input {tuple(first['input'].shape)}\n{source}", fontsize=9)
    act = first["act1"]
    _map_grid(c1_fig, act, f"C1 after activation {act.shape}", columns=3)
    _map_grid(s2_fig, first["s2"], f"S2 pooled {first['s2'].shape}", columns=3)
    c3_fig, s4_fig = middle.subfigures(1, 2)
    act3 = first["act3"]
    _map_grid(c3_fig, act3, f"C3 after activation {act3.shape}", columns=4)
    _map_grid(s4_fig, first["s4"], f"S4 pooled {first['s4'].shape}", columns=4)
    bars_fig, probs_fig = lower.subfigures(1, 2, width_ratios=[2.3, 1])
    ax5, ax6 = bars_fig.subplots(2, 1)
    for ax, key, title in ((ax5, "act5", "F5"), (ax6, "act6", "F6")):
        values = first[key]
        ax.bar(np.arange(len(values)), values, width=0.8, color="tab:blue")
        ax.set_xlim(-1, len(values))
        ax.set_title(f"{title} after activation {values.shape}: one bar per unit", fontsize=9)
        ax.set_xlabel(f"{title} unit", fontsize=8)
        ax.set_ylabel("activation", fontsize=8)
        ax.tick_params(labelsize=7)
    predicted = int(probs.argmax())
    colours = ["tab:orange" if i == predicted else "tab:gray" for i in range(len(probs))]
    axp = probs_fig.subplots()
    axp.barh(np.arange(len(probs)), probs, color=colours)
    axp.set_yticks(np.arange(len(probs)), class_names, fontsize=8)
    axp.invert_yaxis()
    axp.set_xlim(0, 1)
    axp.set_xlabel("probability", fontsize=8)
    axp.tick_params(axis="x", labelsize=7)
    for i, p in enumerate(probs):
        axp.text(min(p, 0.8) + 0.02, i, f"{p:.3f}", va="center", fontsize=7)
    axp.set_title(f"F7 + softmax {probs.shape}\npredicted: {class_names[predicted]}", fontsize=9)
    save_figure(fig, path)
    return fig


def plot_saliency(images, grads, probs, class_names, path, labels=None, sources=None):
    """For each image: the image, d(logit of the predicted class)/d(pixels), and gradient x input. Returns the Figure.

    images (N, 28, 28), grads (N, 28, 28), probs (N, 10). Each column is drawn on one colour scale, symmetric
    about zero, so the rows compare: red raises the predicted class's score (its logit), blue lowers it.
    """
    n = len(images)
    fig = Figure(figsize=(7.6, 2.5 * n + 1.6), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    gxi = grads * images
    m_grad, m_gxi = _symmetric(grads), _symmetric(gxi)
    for i in range(n):
        predicted = int(probs[i].argmax())
        title = f"{sources[i]}\n" if sources else ""
        title += f"predicted {class_names[predicted]} ({probs[i, predicted]:.2f})"
        if labels is not None and labels[i] is not None:
            title += f"\ntrue {class_names[int(labels[i])]}"
        axes[i, 0].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(title, fontsize=8)
        im_grad = axes[i, 1].imshow(grads[i], cmap="RdBu_r", vmin=-m_grad, vmax=m_grad)
        axes[i, 1].set_title("d logit / d pixel", fontsize=8)
        im_gxi = axes[i, 2].imshow(gxi[i], cmap="RdBu_r", vmin=-m_gxi, vmax=m_gxi)
        axes[i, 2].set_title("gradient x input", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    for im, column, label in (
        (im_grad, axes[:, 1], "red: a brighter pixel here\nwould raise the score, blue: lower it"),
        (im_gxi, axes[:, 2], "red: this pixel's ink adds to\nthe score, blue: takes from it"),
    ):
        bar = fig.colorbar(im, ax=column, location="bottom", shrink=0.95, aspect=15, pad=0.01)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(
        "which pixels the predicted class's score (its logit) depends on: red raises it, blue lowers it;\n"
        "each column on one colour scale for all images (the colour bars at the bottom)",
        fontsize=10,
    )
    save_figure(fig, path)
    return fig


def plot_mistakes(images, probs, labels, indices, class_names, path, columns=6):
    """The given test images (the most confident mistakes), titled predicted / true / confidence."""
    n = len(indices)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(columns * 1.9, rows * 2.3 + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        i = int(indices[k])
        predicted = int(probs[i].argmax())
        ax.imshow(np.asarray(images[i]).reshape(SIZE, SIZE), cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"#{i}: {class_names[predicted]} {probs[i, predicted]:.2f}\ntrue {class_names[int(labels[i])]}",
            fontsize=8,
            color="firebrick",
        )
    fig.suptitle("the most confident mistakes on the test set (predicted, confidence, true class)", fontsize=10)
    save_figure(fig, path)


def plot_embedding(projected, ratio, labels, class_names, path):
    """The F6 features' two principal components, one colour per class, with a legend of class names."""
    fig = Figure(figsize=(9, 7), layout="constrained")
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)] + ["black", "olive"]
    for c, name in enumerate(class_names):
        pts = projected[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, color=colours[c % len(colours)], label=name, linewidths=0)
    ax.set_xlabel(f"principal component 1 ({ratio[0]:.0%} of the variance)")
    ax.set_ylabel(f"principal component 2 ({ratio[1]:.0%} of the variance)")
    ax.set_title(f"F6 features (84 numbers per image) of {len(labels)} test images, projected by PCA", fontsize=10)
    legend = ax.legend(markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    for handle in legend.legend_handles:
        handle.set_alpha(1)
    save_figure(fig, path)
