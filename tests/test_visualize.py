"""visualize.py and lenet/visualize.py: preprocessing, layer outputs, saliency, mistakes, PCA, the pictures."""

import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from lenet import LeNet5
from lenet import visualize as vis
from lenet.checkpoint import model_from_checkpoint, save_checkpoint
from lenet.commands.visualize import main
from lenet.data import get_dataset_info

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = get_dataset_info("fashion-mnist").class_names
needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason=f"Fashion-MNIST is not installed in {FASHION}"
)


def make_checkpoint(path, seed=0, **arch):
    model = LeNet5(seed=seed, **arch)
    meta = {"dataset": "fashion-mnist", "class_names": list(CLASS_NAMES), "epoch": 1, "val_acc": 0.1}
    save_checkpoint(path, model, meta)
    return path


def png_bytes(array, mode="L"):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


# -- preprocessing --------------------------------------------------------------------------------


def centre_of_mass(img):
    ys, xs = np.indices(img.shape)
    return (img * ys).sum() / img.sum(), (img * xs).sum() / img.sum()


def ink_box(img, threshold=0.1):
    rows, cols = np.nonzero(img > threshold)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_dark_ink_on_white_is_inverted_scaled_into_20_and_centred_by_mass():
    page = np.ones((200, 120), dtype=np.float32)  # white paper
    page[20:60, 70:110] = 0  # a black square in the top right corner...
    page[60:140, 80:90] = 0  # ...with a long stem below: the centre of mass is not the box's centre
    out = vis.to_dataset_image(page, box=20, centring="mass")
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0) and out.min() >= 0
    assert out[0].max() == 0 and out[:, 0].max() == 0, "the background must become black"
    assert max(ink_box(out)) in (19, 20, 21), ink_box(out)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75, (cy, cx)
    box_top = np.nonzero(out.max(axis=1) > 0.1)[0][0]
    box_bottom = np.nonzero(out.max(axis=1) > 0.1)[0][-1]
    assert (box_top + box_bottom) / 2 > 14, "the heavy top must sit above the centre, the box below it"


def test_bright_ink_on_black_is_kept_and_fashion_rule_fills_28_centred_by_box():
    photo = np.zeros((60, 300), dtype=np.float32)
    photo[10:50, 30:270] = 0.8  # a wide grey bar: the longer side becomes 28
    out = vis.to_dataset_image(photo, box=28, centring="box")
    h, w = ink_box(out)
    assert w == 28 and h in (4, 5), (h, w)
    rows = np.nonzero(out.max(axis=1) > 0.1)[0]
    assert abs((rows[0] + rows[-1]) / 2 - 13.5) <= 0.5
    assert out.max() == pytest.approx(1.0), "the brightest ink becomes 1, as in the data sets"


def test_blank_picture_gives_zeros_and_nan_is_refused():
    assert not vis.to_dataset_image(np.ones((50, 50))).any()
    assert not vis.to_dataset_image(np.zeros((50, 50))).any()
    bad = np.zeros((10, 10))
    bad[3, 3] = np.nan
    with pytest.raises(vis.LenetError, match="not finite"):
        vis.to_dataset_image(bad)


def test_decode_image_reads_png_with_transparency_as_white():
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)  # fully transparent...
    rgba[10:20, 5:15] = (0, 0, 0, 255)  # ...but for an opaque black square
    grey = vis.decode_image(png_bytes(rgba, "RGBA"))
    assert grey.shape == (40, 30)
    assert grey[0, 0] == 1.0 and grey[15, 10] == 0.0


def test_decode_image_refuses_garbage_and_huge_images_without_decoding():
    with pytest.raises(vis.LenetError, match="not an image"):
        vis.decode_image(b"this is not a picture at all")
    with pytest.raises(vis.LenetError, match="not an image"):
        vis.decode_image(png_bytes(np.zeros((50, 50), dtype=np.uint8))[:60])  # truncated
    # A 1-bit PNG of 6000 x 6000 white pixels compresses to a few kB; its header alone is refused.
    huge = io.BytesIO()
    Image.new("1", (6000, 6000), 1).save(huge, format="PNG")
    assert len(huge.getvalue()) < 100_000
    with pytest.raises(vis.LenetError, match="at most"):
        vis.decode_image(huge.getvalue())


# -- what the network computes ----------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_layer_outputs_have_every_stage_and_end_in_the_models_logits(rng, pool):
    model = LeNet5(pool=pool, dtype="float64", seed=3)
    x = rng.random((3, 1, 28, 28))
    out = vis.layer_outputs(model, x)
    shapes = {k: v.shape for k, v in out.items()}
    assert shapes["c1"] == shapes["act1"] == (3, 6, 28, 28)
    assert shapes["s2"] == (3, 6, 14, 14) and shapes["act3"] == (3, 16, 10, 10) and shapes["s4"] == (3, 16, 5, 5)
    assert shapes["act5"] == (3, 120) and shapes["act6"] == (3, 84) and shapes["f7"] == (3, 10)
    np.testing.assert_array_equal(out["f7"], model.forward(x))
    # Each layer's output is the next one's input: C1's pooled activations are S2.
    pooled = out["act1"].reshape(3, 6, 14, 2, 14, 2)
    pooled = pooled.mean(axis=(3, 5)) if pool == "avg" else pooled.max(axis=(3, 5))
    np.testing.assert_allclose(pooled, out["s2"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["act1"], 1 / (1 + np.exp(-out["c1"])), rtol=1e-12)


def test_saliency_equals_finite_differences_of_the_logit(rng):
    model = LeNet5(dtype="float64", seed=5, input_grad=True)
    x = rng.random((2, 1, 28, 28))
    grads, logits = vis.saliency(model, x)
    predicted = logits.argmax(axis=1)
    assert grads.shape == (2, 28, 28) and np.abs(grads).max() > 0
    # h = 1e-4: the logits are O(1) and the gradients O(1e-5), so a smaller step drowns in rounding.
    h = 1e-4
    strongest = [(n, *np.unravel_index(np.abs(grads[n]).argmax(), (28, 28))) for n in range(2)]
    for n, i, j in [(0, 14, 14), (0, 3, 20), (1, 0, 0), (1, 27, 9), *strongest]:
        plus, minus = x.copy(), x.copy()
        plus[n, 0, i, j] += h
        minus[n, 0, i, j] -= h
        numeric = (model.forward(plus)[n, predicted[n]] - model.forward(minus)[n, predicted[n]]) / (2 * h)
        assert grads[n, i, j] == pytest.approx(numeric, rel=1e-5, abs=1e-10), (n, i, j)


def test_saliency_needs_input_grad():
    with pytest.raises(vis.LenetError, match="input_grad"):
        vis.saliency(LeNet5(), np.zeros((1, 1, 28, 28), dtype=np.float32))


def test_predict_matches_forward_and_mistakes_are_sorted_by_confidence(rng):
    model = LeNet5(seed=1)
    x = rng.random((700, 1, 28, 28)).astype(np.float32)
    probs, feats = vis.predict(model, x, batch_size=256)
    assert feats.shape == (700, 84)
    np.testing.assert_allclose(probs, vis.softmax(model.forward(x).astype(np.float64)), rtol=1e-5, atol=1e-7)
    labels = rng.integers(0, 10, 700)
    worst = vis.most_confident_mistakes(probs, labels, count=5)
    predicted = probs.argmax(axis=1)
    assert len(worst) == 5 and np.all(predicted[worst] != labels[worst])
    confidence = probs[worst, predicted[worst]]
    assert np.all(np.diff(confidence) <= 0)
    others = np.setdiff1d(np.nonzero(predicted != labels)[0], worst)
    assert confidence[-1] >= probs[others, predicted[others]].max()


def test_pca_finds_the_direction_of_largest_variance(rng):
    direction = np.array([3.0, 4.0, 0.0, 0.0]) / 5
    second = np.array([0.0, 0.0, 1.0, 0.0])
    x = rng.normal(size=(2000, 1)) * 10 * direction + rng.normal(size=(2000, 1)) * 3 * second
    x += rng.normal(size=(2000, 4)) * 0.1 + 7  # noise and an offset that centring removes
    projected, ratio = vis.pca(x)
    assert projected.shape == (2000, 2)
    assert abs(np.corrcoef(projected[:, 0], x @ direction)[0, 1]) > 0.999
    assert abs(np.corrcoef(projected[:, 1], x @ second)[0, 1]) > 0.99
    assert ratio[0] == pytest.approx(100 / 109, abs=0.02) and ratio[1] == pytest.approx(9 / 109, abs=0.02)
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-9)


# -- the pictures and the command line ---------------------------------------------------------------


def read_png(path):
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    return pixels


# -- each picture says what it shows -----------------------------------------------------------------


def colour_bars(fig):
    """The colour bars of a Figure, each once, in the order their images were drawn."""
    bars = [im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None]
    return list(dict.fromkeys(bars))


def test_filters_have_readable_colour_bars_and_row_labels(tmp_path):
    state = LeNet5(seed=0).state_dict()
    state["c1.weight"] = state["c1.weight"] * 25  # a trained C1's size (weights of about +-5)
    fig = vis.plot_filters(state, tmp_path / "filters.png")
    read_png(tmp_path / "filters.png")
    fig.draw_without_rendering()
    c1_bar, c3_bar = colour_bars(fig)
    for bar, weights in ((c1_bar, state["c1.weight"]), (c3_bar, state["c3.weight"])):
        assert bar.ax.get_ylabel() == "weight"
        m = np.abs(weights).max()
        np.testing.assert_allclose(bar.get_ticks(), [-m, 0, m], rtol=1e-6)  # the extremes and zero, no more
    height = c1_bar.ax.get_window_extent().height / fig.dpi
    assert height > 1.2, f"C1's colour bar is squeezed into {height:.2f} inches"
    assert "red a positive weight, blue a negative one" in fig.get_suptitle()
    row_labels = [ax.yaxis.label for ax in fig.axes if ax.get_ylabel().startswith("S2 map")]
    assert [t.get_text() for t in row_labels] == [f"S2 map {i}" for i in range(6)]
    assert all(t.get_fontsize() >= 9 and t.get_rotation() == 0 for t in row_labels)


def test_feature_maps_label_their_bars_and_keep_the_probabilities_compact(tmp_path, rng):
    outputs = vis.layer_outputs(LeNet5(seed=1), rng.random((1, 1, 28, 28)))
    fig = vis.plot_feature_maps(outputs, CLASS_NAMES, tmp_path / "feature_maps.png", source="noise")
    read_png(tmp_path / "feature_maps.png")
    fig.draw_without_rendering()
    bars = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_xlabel()}
    assert set(bars) == {"F5 unit", "F6 unit", "probability"}, set(bars)
    assert bars["F5 unit"].get_ylabel() == bars["F6 unit"].get_ylabel() == "activation"
    probs = bars["probability"]
    assert [t.get_text() for t in probs.get_yticklabels()] == list(CLASS_NAMES)
    width = probs.get_window_extent().width / fig.bbox.width
    assert width < 0.35, f"the probability panel spans {width:.0%} of the figure's width"
    assert all(bar.ax.get_ylabel() for bar in colour_bars(fig)), "every map's colour bar says what it shows"


def test_saliency_panels_share_one_symmetric_scale_per_column_and_say_what_red_means(tmp_path, rng):
    model = LeNet5(seed=2, input_grad=True)
    images = rng.random((3, 28, 28)).astype(np.float32)
    images[1] *= 0.1  # a faint image: its gradients are smaller, and must look smaller
    grads, logits = vis.saliency(model, images)
    fig = vis.plot_saliency(images, grads, vis.softmax(logits), CLASS_NAMES, tmp_path / "saliency.png")
    read_png(tmp_path / "saliency.png")
    panels = {}
    for ax in fig.axes:
        panels.setdefault(ax.get_title(), []).extend(ax.images)
    for title, values in (("d logit / d pixel", grads), ("gradient x input", grads * images)):
        limits = {im.get_clim() for im in panels[title]}
        m = float(np.abs(values).max())
        assert len(panels[title]) == 3 and len(limits) == 1, limits
        np.testing.assert_allclose(limits.pop(), (-m, m), rtol=1e-6)
    bars = colour_bars(fig)
    assert len(bars) == 2
    assert all("red" in bar.ax.get_xlabel() and "blue" in bar.ax.get_xlabel() for bar in bars)
    assert "red raises it, blue lowers it" in fig.get_suptitle()


def colourful_fraction(pixels):
    """The share of pixels that are neither white nor grey (a panel drawn in colour)."""
    rgb = pixels[..., :3]
    return float((rgb.max(axis=2) - rgb.min(axis=2) > 0.15).mean())


@needs_fashion
def test_visualize_writes_every_picture(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "run" / "best_model.npz")
    drawing = np.full((90, 90), 255, dtype=np.uint8)
    drawing[20:70, 40:50] = 0
    (tmp_path / "drawing.png").write_bytes(png_bytes(drawing))
    argv = ["--checkpoint", str(checkpoint), "--index", "7", "3", "--image", str(tmp_path / "drawing.png")]
    assert main([*argv, "--mistakes", "5", "--data-dir", str(FASHION)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "run"  # beside the checkpoint
    names = ["filters.png", "feature_maps.png", "saliency.png", "mistakes.png", "embedding.png"]
    for name in names:
        assert f"wrote {out / name}" in printed
        pixels = read_png(out / name)
        assert pixels[..., :3].std() > 0.05, f"{name} looks blank"
        assert colourful_fraction(pixels) > 0.002, f"{name} has nothing in colour"
    assert sorted(p.name for p in out.iterdir()) == sorted(["best_model.npz", *names]), "temporary files left"
    # The saliency picture has a row per image: the uploaded one and two test images.
    sal = read_png(out / "saliency.png")
    assert sal.shape[0] >= 3 * 240, sal.shape  # 2.5 inches a row at 100 dpi


def test_visualize_leaves_a_notebooks_backend_alone(tmp_path):
    script = f"""
import matplotlib
matplotlib.use("svg")
import numpy as np
from lenet import visualize as vis
from lenet import LeNet5
vis.plot_filters(LeNet5().state_dict(), {str(tmp_path / "f.png")!r})
import sys
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    read_png(tmp_path / "f.png")


def run_cli(*args):
    env = {**os.environ, "COLUMNS": "200"}  # --help on one line per flag
    return subprocess.run(
        [sys.executable, str(ROOT / "visualize.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visualize.py: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_visualize_bad_input_is_one_line_and_exit_2(tmp_path):
    assert_one_line_error(run_cli("--checkpoint", str(tmp_path / "missing.npz")), "no such file")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    checkpoint = make_checkpoint(tmp_path / "best_model.npz")
    if (FASHION / "t10k-labels-idx1-ubyte.gz").exists():
        data = ("--data-dir", str(FASHION))
        assert_one_line_error(
            run_cli("--checkpoint", str(checkpoint), *data, "--image", str(not_image)), "not an image"
        )
        assert_one_line_error(run_cli("--checkpoint", str(checkpoint), *data, "--index", "10000"), "out of range")
        assert_one_line_error(run_cli("--checkpoint", str(checkpoint), *data, "--image", str(tmp_path / "no.png")))
    assert_one_line_error(run_cli("--index", "x"), "invalid int value")


def test_visualize_help_shows_defaults():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "(default: runs/fashion-mnist/best_model.npz)" in result.stdout and "(default: 18)" in result.stdout
    assert "(default: None)" not in result.stdout, "a default of None is said in words"


def test_model_from_checkpoint_can_compute_the_input_gradient(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "best_model.npz", seed=4)
    model, _ = model_from_checkpoint(checkpoint, input_grad=True)
    plain, _ = model_from_checkpoint(checkpoint)
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), plain.forward(x))
    assert model.backward(np.ones((2, 10), dtype=np.float32)).shape == (2, 1, 28, 28)
    plain.forward(x)
    assert plain.backward(np.ones((2, 10), dtype=np.float32)) is None
