"""Pictures: training curves, a grid of images with class names, a confusion matrix. All written atomically.

The figures are `matplotlib.figure.Figure` objects drawn straight to PNG files, never pyplot's: pyplot would
pick (and `matplotlib.use` would switch) the process's backend, which in a notebook breaks its inline plots,
and would keep every figure open until closed.
"""

import numpy as np
from matplotlib.figure import Figure

from .files import atomic_write


def save_figure(fig, path):
    """A Figure as a PNG at `path`, written atomically, cropped to what is drawn (every picture of lenet's)."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")


def plot_history(history, path):
    """Loss and accuracy per epoch, train and validation, in two panels (the tutorial's figure).

    history: a DataFrame (or dict of lists) with columns epoch, train_loss, val_loss, train_acc, val_acc.
    """
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], "o-", label="train", markersize=3)
        ax.plot(history["epoch"], history[f"val_{metric}"], "o-", label="validation", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_images(images, class_names, labels, path, predicted=None, columns=8, title=None):
    """A grid of images, bright ink on black as in the data sets, titled with their class; with `predicted`,
    each titled with the predicted class and the mistakes in red with the true class below. Returns the Figure.

    images (N, 1, H, W) or (N, H, W) in [0, 1]; labels and predicted (N,) class indices. `title` goes on top;
    with `predicted`, a line under it says what red means.
    """
    images = np.asarray(images).reshape(len(images), *np.shape(images)[-2:])
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(columns * 1.6, rows * 1.8 + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    wrong_count = 0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        true = class_names[int(labels[i])]
        if predicted is None:
            ax.set_title(true, fontsize=8)
        else:
            guess = class_names[int(predicted[i])]
            wrong = guess != true
            wrong_count += wrong
            ax.set_title(f"{guess}\n(true: {true})" if wrong else guess, fontsize=8, color="red" if wrong else "black")
    if predicted is not None:
        legend = (
            f"the predicted class above each image; red: a mistake, the true class in brackets ({wrong_count} of {n})"
        )
        title = f"{title}\n{legend}" if title else legend
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return fig


def plot_confusion_matrix(matrix, class_names, path, of="images"):
    """matrix[i, j] = how many examples of true class i were predicted as j. Returns the Figure.

    The title says what was counted (`of`: "fashion-mnist test images"), the accuracy and how to read it (rows
    true, columns predicted, the diagonal right); the colour bar says what its colours count.
    """
    matrix = np.asarray(matrix)
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else 0.0
    title = f"confusion matrix of {total} {of}: accuracy {accuracy:.4f}"
    fig = Figure(figsize=(8.5, 7.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\nrow: the true class, column: what the network said; the diagonal is right", fontsize=10)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > threshold else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="images of the row's class predicted as the column's")
    save_figure(fig, path)
    return fig
