"""What the demo's tests share: epoch records written by hand (docs/training.md), demo.py as a process, and a headless
chromium (Debian's binaries) with the page's own measurements.

The records are written here, following docs/training.md, so that the page's tests depend on nothing of train.py's side
of issue 22: a run folder of a few epochs, each epoch's figures measured as docs/training.md says on the model's own
passes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lenet import LeNet5
from lenet.checkpoint import save_checkpoint
from lenet.data import get_dataset_info
from lenet.files import atomic_write
from lenet.layers import SoftmaxCrossEntropy

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = list(get_dataset_info("fashion-mnist").class_names)
META = {"dataset": "fashion-mnist", "class_names": CLASS_NAMES, "epoch": 3, "val_acc": 0.5}
LEARNABLE = ("c1", "c3", "f5", "f6", "f7")
ACTIVATION_AFTER = {"c1": "act1", "c3": "act3", "f5": "act5", "f6": "act6"}


# -- epoch records, as docs/training.md describes them --------------------------------------------------------------
def saturated_share(y, activation):
    if activation == "sigmoid":
        return float(((y < 0.05) | (y > 0.95)).mean())
    if activation == "tanh":
        return float((np.abs(y) > 0.9).mean())
    return float((y == 0).mean())


def epoch_record(model, epoch, probe, validation, train=(None, None)):
    """One entry of records.json: the figures docs/training.md lists, on the model's own forward and backward passes."""
    x, y = probe
    loss_fn = SoftmaxCrossEntropy()
    a, outputs = x, {}
    for name, layer in model.layers:
        a = layer.forward(a)
        outputs[name] = a
    loss_fn.forward(a, y)
    model.backward(loss_fn.backward())
    layers = {}
    for name in LEARNABLE:
        layer = getattr(model, name)
        g = layer.weight.grad.astype(np.float64)
        after = ACTIVATION_AFTER.get(name)
        layers[name] = {
            "weight_norm": float(np.linalg.norm(layer.weight.data.astype(np.float64))),
            "grad_norm": float(np.linalg.norm(g)),
            "grad_mean_abs": float(np.abs(g).mean()),
            "saturated": None if after is None else saturated_share(outputs[after], model.activation),
        }
    vx, vy = validation
    logits = model.forward(vx)
    predicted = logits.argmax(axis=1)
    val_loss = float(SoftmaxCrossEntropy().forward(logits, vy))
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (vy, predicted), 1)
    return {
        "epoch": epoch,
        "train_loss": train[0],
        "train_acc": train[1],
        "val_loss": val_loss,
        "val_acc": float((predicted == vy).mean()),
        "confusion": confusion.tolist(),
        "layers": layers,
    }


class RecordWriter:
    """Writes a run folder's epochs/ one epoch at a time, atomically, as train.py does (docs/training.md)."""

    def __init__(self, run_dir, validation, probe_count=32, activation="sigmoid"):
        self.run_dir = Path(run_dir)
        self.validation = validation
        self.probe = (validation[0][:probe_count], validation[1][:probe_count])
        self.records = {
            "version": 1,
            "dataset": "fashion-mnist",
            "class_names": CLASS_NAMES,
            "activation": activation,
            "probe": {"split": "validation", "count": probe_count},
            "epochs": [],
        }

    def write(self, model, train=(None, None)):
        epoch = len(self.records["epochs"])
        entry = epoch_record(model, epoch, self.probe, self.validation, train)
        meta = {
            "epoch": epoch,
            "dataset": "fashion-mnist",
            "class_names": CLASS_NAMES,
            "train_config": {"batch_size": 32},
            "val_acc": None if epoch == 0 else entry["val_acc"],
        }
        save_checkpoint(self.run_dir / "epochs" / f"epoch_{epoch:04d}.npz", model, meta)
        self.records["epochs"].append(entry)
        with atomic_write(self.run_dir / "epochs" / "records.json", "w") as f:
            json.dump(self.records, f)
        return entry


def random_validation(n=64, seed=3):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def write_run(run_dir, epochs=3, seed=0):
    """A run folder with epochs 0..epochs, each a differently seeded model (cheap), and its best_model.npz."""
    writer = RecordWriter(run_dir, random_validation())
    models = [LeNet5(seed=seed + e) for e in range(epochs + 1)]
    for e, model in enumerate(models):
        writer.write(model, (None, None) if e == 0 else (2.0 - 0.1 * e, 0.1 * e))
    save_checkpoint(Path(run_dir) / "best_model.npz", models[-1], META)
    return models


# -- demo.py as a program ---------------------------------------------------------------------------------------
@contextmanager
def demo_process(checkpoint, data_dir=FASHION, extra=()):
    """Start demo.py on a free port; yield its URL; stop it with Ctrl-C (SIGINT) and check that it stopped cleanly."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(checkpoint), "--port", "0"]
        + ["--data-dir", str(data_dir), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, line + proc.stderr.read()
        yield line.split(" on ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# -- the page in a real browser -----------------------------------------------------------------------------------
BROWSER = ("/usr/bin/chromium", "/usr/bin/chromedriver")  # Debian's binaries: Selenium Manager needs the internet


def browser_missing(binaries=BROWSER):
    """Why the browser test cannot run here, or None; a reason that says how to get what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    missing = [binary for binary in binaries if not Path(binary).exists()]
    if missing:
        return (
            f"the browser test needs chromium and chromedriver; {' and '.join(missing)} missing: on Debian/Ubuntu "
            "install them with: sudo apt-get install chromium chromium-driver"
        )
    return None


def require_browser_and_data():
    """Skip (or, where CI installs the browser, fail) a test that needs chromium and Fashion-MNIST's test set."""
    reason = browser_missing()
    if reason and os.environ.get("LENET_REQUIRE_BROWSER"):  # set by .ci/run: CI installs the browser
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    if not (FASHION / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION}")


@contextmanager
def headless_chromium(width=1400, height=1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lenet-chromium-")
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script, timeout=30):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for: {script}")


def draw_stroke(driver, points):
    """Press at points[0] (pixels from the pad's centre), move through the others, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = driver.find_element("id", "pad")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", pad)
    chain = ActionChains(driver, duration=10).move_to_element_with_offset(pad, *points[0]).click_and_hold()
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        chain = chain.move_by_offset(x1 - x0, y1 - y0)
    chain.release().perform()


CANVAS_IS_NOT_BLANK = """
const canvases = document.querySelectorAll(arguments[0]);
if (canvases.length === 0) return false;
for (const c of canvases) {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let differs = false;
  for (let i = 4; i < d.length; i += 4) {
    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) { differs = true; break; }
  }
  if (!differs) return false;
}
return true;
"""


def page_ready(driver, url):
    """Open the page and wait for its first screen: a test image through every panel."""
    driver.get(url)
    wait_for(driver, "document.body.dataset.ready === '1'")
    wait_for(
        driver, "(window.lenetStats.actions['first-screen'] || []).length > 0 && document.body.dataset.busy !== '1'"
    )


def action_times(driver):
    """({action: [ms]} measured by the page; by API path, the milliseconds the server computed and its thread's CPU
    time (Server-Timing), and the time from sending each call to its answer parsed in the page; {panel: [ms]} drawing
    an answer)."""
    return driver.execute_script("const s = window.lenetStats; return [s.actions, s.server, s.cpu, s.calls, s.draws];")


def latency_line(name, values):
    values = list(values)
    return (
        f"{name}: median {np.median(values):.1f} ms over {len(values)} (min {min(values):.1f}, max {max(values):.1f})"
    )
