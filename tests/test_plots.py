import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from lenet.plots import plot_confusion_matrix, plot_history, plot_images

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture(autouse=True)
def no_figures_before():
    plt.close("all")  # another module's leftovers must not count against these tests


def read_png(path):
    """(height, width) of the PNG at path, after checking that it is one and is alone in its folder."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0, "a blank picture"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temporary files left behind"
    assert plt.get_fignums() == [], "figures left open"
    return pixels


def red_pixels(pixels):
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return int(((r > 0.8) & (g < 0.3) & (b < 0.3)).sum())


def sample_images(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("as_dataframe", [True, False], ids=["dataframe", "dict"])
def test_plot_history(tmp_path, as_dataframe):
    history = {
        "epoch": [1, 2, 3],
        "train_loss": [2.0, 1.0, 0.5],
        "train_acc": [0.3, 0.6, 0.8],
        "val_loss": [2.1, 1.2, 0.7],
        "val_acc": [0.25, 0.55, 0.75],
        "seconds": [1.0, 1.0, 1.0],
    }
    path = tmp_path / "curves.png"
    plot_history(pd.DataFrame(history) if as_dataframe else history, path)
    height, width = read_png(path).shape[:2]
    assert width > 2 * height  # two panels side by side


def test_plot_images_without_predictions(tmp_path):
    images, labels = sample_images()
    path = tmp_path / "batch.png"
    fig = plot_images(images, CLASS_NAMES, labels, path, title="one training batch")
    pixels = read_png(path)
    height, width = pixels.shape[:2]
    assert width > 3 * height  # eight images: one row
    assert red_pixels(pixels) == 0
    assert fig.get_suptitle() == "one training batch"


def test_plot_images_draws_bright_ink_on_black_as_every_other_picture(tmp_path):
    """Blank images (all 0: no ink) must come out black, as the data sets and the other pictures show them."""
    images, labels = np.zeros((8, 1, 28, 28), dtype=np.float32), np.arange(8)
    images[:, 0, 10:18, 10:18] = 1  # a bright square of ink in each
    for predicted in (None, labels):
        path = tmp_path / ("batch" if predicted is None else "predictions") / "p.png"
        plot_images(images, CLASS_NAMES, labels, path, predicted=predicted)
        grey = read_png(path)[..., :3].mean(axis=2)
        black = (grey < 0.05).mean()
        assert black > 0.25, f"{path.parent.name}: only {black:.0%} of the picture is black background"


def test_plot_images_marks_wrong_predictions_in_red_and_says_so(tmp_path):
    images, labels = sample_images()
    right_fig = plot_images(images, CLASS_NAMES, labels, tmp_path / "right" / "p.png", predicted=labels)
    wrong = (labels + 1) % 10
    wrong[:3] = labels[:3]
    wrong_fig = plot_images(images, CLASS_NAMES, labels, tmp_path / "wrong" / "p.png", predicted=wrong, title="test")
    right, wrong = read_png(tmp_path / "right" / "p.png"), read_png(tmp_path / "wrong" / "p.png")
    assert red_pixels(right) == 0
    assert red_pixels(wrong) > 100
    assert "red: a mistake" in right_fig.get_suptitle() and "(0 of 8)" in right_fig.get_suptitle()
    heading, legend = wrong_fig.get_suptitle().split("\n")
    assert heading == "test" and "red: a mistake" in legend and "(5 of 8)" in legend, legend


def test_plot_images_takes_n_h_w_images_and_a_partial_row(tmp_path):
    images, labels = sample_images(n=5)
    path = tmp_path / "few.png"
    plot_images(images[:, 0], CLASS_NAMES, labels, path, columns=4)
    read_png(path)


def test_plot_confusion_matrix(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, (10, 10)) + np.diag(rng.integers(500, 1000, 10))
    path = tmp_path / "confusion_matrix.png"
    fig = plot_confusion_matrix(matrix, CLASS_NAMES, path, of="test images")
    height, width = read_png(path).shape[:2]
    assert 0.7 < width / height < 1.6  # a square matrix with a color bar
    ax = fig.axes[0]
    title = ax.get_title()
    assert f"confusion matrix of {matrix.sum()} test images: accuracy {np.trace(matrix) / matrix.sum():.4f}" in title
    assert "row: the true class" in title and "column: what the network said" in title
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true class", "predicted class")
    bar = ax.images[0].colorbar
    assert bar is not None and "images" in bar.ax.get_ylabel(), "the colour bar must say what it counts"
    assert bar.vmin == 0 and bar.vmax == matrix.max()


def test_plot_replaces_an_existing_file(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"an old picture")
    plot_confusion_matrix(np.eye(3, dtype=int), CLASS_NAMES[:3], path)
    read_png(path)


def test_failed_plot_closes_its_figure_and_leaves_no_file(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the plot's folder should be")
    with pytest.raises(OSError):
        plot_confusion_matrix(np.eye(3, dtype=int), CLASS_NAMES[:3], blocker / "confusion_matrix.png")
    assert plt.get_fignums() == []
    assert [p.name for p in tmp_path.iterdir()] == [blocker.name]


# Draws with lenet after choosing a backend, as a notebook does (%matplotlib inline), in a fresh process:
# the backend must be the user's afterwards, and pyplot never loaded by lenet.
KEEPS_THE_BACKEND = """
import sys
import matplotlib
matplotlib.use("svg")
import numpy as np
import lenet.plots, lenet.trainer
lenet.plots.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b", "c"], sys.argv[1])
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_drawing_leaves_the_users_matplotlib_backend_alone(tmp_path):
    path = tmp_path / "confusion_matrix.png"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", KEEPS_THE_BACKEND, str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]  # still the user's backend; pyplot never imported
    read_png(path)
