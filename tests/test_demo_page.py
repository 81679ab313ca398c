"""The page's panels of issue 22 in a real headless chromium (Debian's): the backward pass step by step, the SGD step
on a private copy, im2col, and the epoch slider, each checked against lenet's Python, and the time each page action
takes, measured in the browser as the strokes' are, with the server's own compute time beside it.

Run as a program, this file takes the screenshots of docs/demo.md (docs/demo_*.png) and prints the latencies:
    python tests/test_demo_page.py --checkpoint runs/x/best_model.npz   # runs/x keeps epoch records
"""

import hashlib
import http.client
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from demo_helpers import (
    CANVAS_IS_NOT_BLANK,
    FASHION,
    ROOT,
    RecordWriter,
    action_times,
    demo_process,
    draw_stroke,
    headless_chromium,
    latency_line,
    page_ready,
    random_validation,
    require_browser_and_data,
    wait_for,
)

from lenet import LeNet5
from lenet.checkpoint import model_from_checkpoint, save_checkpoint
from lenet.data import load_dataset
from lenet.layers import SoftmaxCrossEntropy

IDLE = "document.body.dataset.busy !== '1'"
CHOOSE_TARGET = (
    "const s = document.getElementById('target'); s.value = arguments[0]; s.dispatchEvent(new Event('change'));"
)
PANEL = "document.getElementById('im2col-panel').dataset"


def python_backward(model, x, target):
    """Every gradient of one image's loss, by the model's own layers: {layer: dL/d(output)}, dL/dx, the loss."""
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(model.forward(x[None, None]), np.array([target]))
    grads, d = {}, loss_fn.backward()
    for name, layer in reversed(model.layers):
        grads[name] = d[0]
        d = layer.backward(d)
    grads["input"] = d[0, 0]
    return grads, float(loss), loss_fn.probs[0]


def page_values(driver, selector):
    """The numbers the page drew into the canvases of `selector`, in order (each canvas keeps what it drew); the
    legends' colour ramps left out."""
    return np.array(
        driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).filter(c => !c.classList.contains('ramp'))"
            ".flatMap(c => Array.from(c.lenetValues));",
            selector,
        )
    )


def until_idle(driver, script):
    return wait_for(driver, f"({script}) && {IDLE}")


def hover(driver, element, x, y):
    """Move the pointer to (x, y) CSS pixels from the element's top left corner."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    size = element.size
    ActionChains(driver, duration=0).move_to_element_with_offset(
        element, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).perform()


def test_step_through_sgd_im2col_and_slider(epoch_run):
    require_browser_and_data()
    checkpoint = epoch_run / "best_model.npz"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model, _ = model_from_checkpoint(checkpoint, input_grad=True)
    images, labels, _ = load_dataset("fashion-mnist", "test", data_dir=FASHION)
    x, label = images[0, 0], int(labels[0])
    with demo_process(checkpoint) as url, headless_chromium() as driver:
        page_ready(driver, url)

        # 1. The step-through's numbers are Python's: the first screen's test image, against its true class.
        grads, loss, _ = python_backward(model, x, label)
        shown = driver.find_element("id", "loss")
        assert int(shown.get_attribute("data-target")) == label
        assert float(shown.get_attribute("data-value")) == loss
        layers = driver.execute_script(
            "return Array.from(document.querySelectorAll('#chain figure[data-layer]'), f => f.dataset.layer);"
        )
        assert layers == ["f7", "act6", "f6", "act5", "f5", "s4", "act3", "c3", "s2", "act1", "c1", "input"]
        for name in layers:
            got = page_values(driver, f"#chain figure[data-layer='{name}'] canvas")
            np.testing.assert_array_equal(got, grads[name].ravel().astype(np.float64), err_msg=name)
        for name, p in model.named_parameters():
            if name.endswith(".weight"):
                layer = name.split(".")[0]
                got = page_values(driver, f"#chain figure[data-param='{layer}.weight_grad'] canvas")
                np.testing.assert_array_equal(got, p.grad.ravel().astype(np.float64), err_msg=name)
                got = page_values(driver, f"#chain figure[data-param='{layer}.weight'] canvas")
                np.testing.assert_array_equal(got, p.data.ravel().astype(np.float64), err_msg=name)
        sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll('#sizes-outputs .size-row'), r => [r.dataset.layer, "
            "Number(r.dataset.value)]);"
        )
        assert sizes == [[n, float(np.abs(grads[n].astype(np.float64)).mean())] for n in ("f7", "f6", "f5", "c3", "c1")]
        legends = driver.execute_script("return document.querySelectorAll('#chain .legend .ramp').length;")
        assert legends == len(layers) + 2 * 5, "a legend for every map and bar chart of the step-through"

        # Another target: the loss against it.
        other = (label + 3) % 10
        driver.execute_script(CHOOSE_TARGET, str(other))
        until_idle(driver, f"document.getElementById('loss').dataset.target === '{other}'")
        assert float(shown.get_attribute("data-value")) == python_backward(model, x, other)[1]
        driver.execute_script(CHOOSE_TARGET, "auto")
        until_idle(driver, f"document.getElementById('loss').dataset.target === '{label}'")

        # 2. One SGD step changes a private copy only.
        lr = 0.05
        driver.execute_script("document.getElementById('lr').value = arguments[0];", str(lr))
        driver.find_element("id", "sgd-step").click()
        until_idle(driver, "document.getElementById('weights-state').dataset.steps === '1'")
        twin = LeNet5(model.activation, model.pool, input_grad=True)
        twin.load_state_dict(model.state_dict())
        _, before_loss, before_probs = python_backward(twin, x, label)
        for _, p in twin.named_parameters():
            p.data -= lr * p.grad
        _, after_loss, after_probs = python_backward(twin, x, label)
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('#sgd-bars .bar-row'), r => [r.dataset.before, r.dataset.p]);"
        )
        assert [float(b) for b, _ in rows] == [float(p) for p in before_probs]
        assert [float(a) for _, a in rows] == [float(p) for p in after_probs]
        step_loss = driver.find_element("id", "sgd-loss")
        assert float(step_loss.get_attribute("data-before")) == before_loss
        assert float(step_loss.get_attribute("data-after")) == after_loss < before_loss
        np.testing.assert_array_equal(
            page_values(driver, "#chain figure[data-param='f7.weight'] canvas"), twin.f7.weight.data.ravel()
        )
        assert "private copy after 1 step" in driver.find_element("id", "weights-state").text
        # The served weights answer as before, and the checkpoint's file is as it was.
        assert served_loss(url, x, label) == loss
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
        driver.find_element("id", "sgd-reset").click()
        until_idle(driver, "document.getElementById('weights-state').dataset.steps === '0'")
        assert float(shown.get_attribute("data-value")) == loss

        # 3. im2col: hovering an output highlights its window, 25 inputs for C1 and 150 for C3, from lenet's im2col.
        for layer, side, out, inputs in (("c1", 32, 28, 25), ("c3", 14, 10, 150)):
            driver.find_element("css selector", f"input[name='im2col-layer'][value='{layer}']").click()
            until_idle(driver, f"document.getElementById('im2col-shapes').textContent.includes('{inputs},')")
            maps = driver.find_elements("css selector", "#im2col-output canvas")
            for m, (fy, fx) in ((1, (0.2, 0.3)), (len(maps) - 1, (0.9, 0.6))):
                driver.execute_script(f"delete {PANEL}.row;")
                height, width = maps[m].size["height"], maps[m].size["width"]
                hover(driver, maps[m], fx * width, fy * height)
                wait_for(driver, f"{PANEL}.row === '{m}'")
                column = int(driver.execute_script(f"return {PANEL}.column;"))
                oh, ow = divmod(column, out)
                cells = sorted(int(c) for c in driver.execute_script(f"return {PANEL}.cells;").split(","))
                channels = inputs // 25
                want = sorted(
                    c * side * side + (oh + i) * side + ow + j
                    for c in range(channels)
                    for i in range(5)
                    for j in range(5)
                )
                assert int(driver.execute_script(f"return {PANEL}.highlighted;")) == inputs
                assert cells == want, (layer, m, oh, ow)
            # Backward: hovering an input cell lists the windows col2im adds there, and their sum is dL/d(input).
            driver.execute_script(f"delete {PANEL}.cell;")
            driver.find_element("css selector", "input[name='im2col-mode'][value='backward']").click()
            until_idle(driver, f"{PANEL}.cell !== undefined")
            grid = driver.find_element("id", "im2col-input")
            driver.execute_script(f"delete {PANEL}.cell;")
            hover(driver, grid, grid.size["width"] * 0.37, grid.size["height"] * 0.45)
            cell = int(wait_for(driver, f"{PANEL}.cell"))
            c, rest = divmod(cell, side * side)
            y, xx = divmod(rest, side)
            pad = 2 if layer == "c1" else 0
            inner = side - 2 * pad
            covering = sum(1 for i in range(5) for j in range(5) if 0 <= y - i <= side - 5 and 0 <= xx - j <= side - 5)
            assert int(driver.execute_script(f"return {PANEL}.contributions;")) == covering
            want_dx = grads["input"] if layer == "c1" else grads["s2"][c]
            assert float(driver.execute_script(f"return {PANEL}.dx;")) == want_dx[y - pad, xx - pad]
            assert 0 <= y - pad < inner and 0 <= xx - pad < inner
            driver.find_element("css selector", "input[name='im2col-mode'][value='forward']").click()
            until_idle(driver, f"{PANEL}.row !== undefined")

        # 4. The slider changes the pictures: the filters are those of the epoch's file.
        from selenium.webdriver.common.keys import Keys

        slider = driver.find_element("id", "epoch-slider")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", slider)
        until_idle(driver, "document.getElementById('epochs-panel').dataset.shownEpoch === '3'")
        maps_last = page_values(driver, "#epoch-c1 canvas")
        for key, epoch in ((Keys.HOME, 0), (Keys.ARROW_RIGHT, 1), (Keys.END, 3)):
            slider.send_keys(key)
            until_idle(driver, f"document.getElementById('epochs-panel').dataset.shownEpoch === '{epoch}'")
            want = LeNet5(seed=epoch).c1.weight.data.ravel()  # write_run's model of that epoch
            np.testing.assert_array_equal(page_values(driver, "#epoch-c1-filters"), want, err_msg=f"epoch {epoch}")
            if epoch == 0:
                assert not np.array_equal(page_values(driver, "#epoch-c1 canvas"), maps_last)
        for selector in ("#probe", "#epoch-c3-filters", "#epoch-c3 canvas", "#epoch-saliency", "#confusion"):
            assert driver.execute_script(CANVAS_IS_NOT_BLANK, selector), f"{selector} is blank"

        report(measure(driver, slider))


def served_loss(url, x, target):
    """The loss /api/backward answers for the served weights (no session)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/backward", json.dumps({"pixels": x.ravel().tolist(), "target": target}))
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer["loss"]


def measure(driver, slider, rounds=12):
    """Each page action, `rounds` times: a stroke, a target, an SGD step, a reset, the slider, im2col's layer, hover."""
    from selenium.webdriver.common.keys import Keys

    def count(name):
        return f"(window.lenetStats.actions['{name}'] || []).length"

    def act(name, do):
        before = driver.execute_script(f"return {count(name)};")
        do()
        until_idle(driver, f"{count(name)} > {before}")

    forward = driver.find_element("css selector", "input[name='im2col-mode'][value='forward']")
    if not forward.is_selected():
        act("im2col-mode", forward.click)
    for i in range(rounds):
        act("stroke", lambda i=i: draw_stroke(driver, [(-60 + 8 * i, -80), (0, 0), (40, 90 - 5 * i)]))
        act("target", lambda i=i: driver.execute_script(CHOOSE_TARGET, str(i % 10)))
        act("sgd-step", lambda: driver.find_element("id", "sgd-step").click())
        act("sgd-reset", lambda: driver.find_element("id", "sgd-reset").click())
        act("epoch", lambda i=i: slider.send_keys(Keys.ARROW_RIGHT if i % 2 else Keys.ARROW_LEFT))
        layer = "c1" if i % 2 == 0 else "c3"
        act("im2col-layer", lambda layer=layer: driver.find_element("css selector", f"input[value='{layer}']").click())
        maps = driver.find_elements("css selector", "#im2col-output canvas")
        act("hover", lambda i=i, maps=maps: hover(driver, maps[i % len(maps)], 5 + 3 * i, 8 + 2 * i))
    return action_times(driver)


def report(times):
    actions, server, cpu, calls, draws = times
    print()
    for name in ("stroke", "target", "sgd-step", "sgd-reset", "epoch", "im2col-layer", "hover"):
        print(latency_line(f"page, {name}", actions[name]))
    for path, values in sorted(server.items()):
        print(latency_line(f"server compute, {path}", values))
    for path, values in sorted(cpu.items()):
        print(latency_line(f"server CPU, {path}", values))
    for path, values in sorted(calls.items()):
        print(latency_line(f"call to parsed answer, {path}", values))
    for panel, values in sorted(draws.items()):
        print(latency_line(f"drawing, {panel}", values))
    for name in ("stroke", "target", "sgd-step", "sgd-reset", "epoch", "im2col-layer", "hover"):
        assert np.median(actions[name]) < 1000, f"{name}: the page took a second or more (median)"


# -- a run still writing into the served folder ------------------------------------------------------------------
def test_epochs_written_while_the_page_is_open_appear_one_by_one(tmp_path):
    require_browser_and_data()
    checkpoint = tmp_path / "served" / "best_model.npz"
    save_checkpoint(checkpoint, LeNet5(seed=1), {"dataset": "fashion-mnist", "epoch": 1, "val_acc": 0.5})
    run = tmp_path / "run"  # not there yet: the run has not started
    with demo_process(checkpoint, extra=["--run", str(run)]) as url, headless_chromium() as driver:
        page_ready(driver, url + "?poll=150")
        wait_for(driver, "document.getElementById('epochs-panel').dataset.available === '0'")
        assert "no run folder" in driver.find_element("id", "epochs-status").text
        writer = RecordWriter(run, random_validation())
        for epoch in range(4):
            model = LeNet5(seed=10 + epoch)
            writer.write(model, (None, None) if epoch == 0 else (1.0, 0.5))
            until_idle(driver, f"document.getElementById('epochs-panel').dataset.shownEpoch === '{epoch}'")
            np.testing.assert_array_equal(page_values(driver, "#epoch-c1-filters"), model.c1.weight.data.ravel())
        assert driver.execute_script("return window.lenetStats.epochCounts;") == [1, 2, 3, 4]
        assert driver.find_element("id", "epoch-slider").get_attribute("max") == "3"


def test_a_train_py_run_appears_epoch_by_epoch(tmp_path):
    require_browser_and_data()
    checkpoint = tmp_path / "served" / "best_model.npz"
    save_checkpoint(checkpoint, LeNet5(seed=1), {"dataset": "fashion-mnist", "epoch": 1, "val_acc": 0.5})
    run = tmp_path / "run"
    with demo_process(checkpoint, extra=["--run", str(run)]) as url, headless_chromium() as driver:
        page_ready(driver, url + "?poll=100")
        train = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "--limit", "10000", "--epochs", "4", "--out", str(run)]
            + ["--no-progress", "--threads", "1"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            until_idle(driver, "document.getElementById('epochs-panel').dataset.shownEpoch === '4'")
        finally:
            _, err = train.communicate(timeout=600)
        assert train.returncode == 0, err
        counts = driver.execute_script("return window.lenetStats.epochCounts;")
        print(f"\nthe page saw these numbers of epochs, one poll after another: {counts}")
        assert counts == [1, 2, 3, 4, 5], f"epochs 0-4 one by one, not {counts}"


# -- docs/demo.md's screenshots -------------------------------------------------------------------------------------
def save_png(png, path, width=None, rows=None):
    """A screenshot as a PNG at `path`: rows (top, bottom) of it only, and no wider than `width`."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if rows:
        image = image.crop((0, rows[0], image.width, rows[1]))
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    # 256 colours (octree, no dithering): a third of the bytes, and the colour maps' ramps stay smooth to the eye.
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({Path(path).stat().st_size // 1024} KB)")


def take_screenshots(checkpoint, folder):
    """The page's panels for docs/demo.md (docs/demo_*.png): the first screen, the step-through (its top and its
    convolutions), an SGD step, im2col (C1, C3, col2im), the slider at the first and the last epoch; then the
    latencies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with demo_process(checkpoint) as url, headless_chromium(1400, 900) as driver:
        page_ready(driver, url)
        until_idle(driver, "document.getElementById('epochs-panel').dataset.shownEpoch !== undefined")
        save_png(driver.get_screenshot_as_png(), folder / "demo_first_screen.png")
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 400)
        until_idle(driver, "true")
        # The step-through is long: its top (the loss, the sizes, F7 and F6), and its convolutions (C3 to the image).
        png = driver.find_element("id", "backward-panel").screenshot_as_png
        top, f6_end, c3_start, bottom = driver.execute_script(
            "const p = document.getElementById('backward-panel').getBoundingClientRect();"
            "const s = document.querySelectorAll('#chain .stage');"
            "return [0, s[1].getBoundingClientRect().bottom - p.top, s[4].getBoundingClientRect().top - p.top,"
            " p.height];"
        )
        save_png(png, folder / "demo_backward.png", 1000, (top, round(f6_end)))
        save_png(png, folder / "demo_backward_conv.png", 1000, (round(c3_start), round(bottom)))
        driver.find_element("id", "sgd-step").click()
        until_idle(driver, "document.getElementById('weights-state').dataset.steps === '1'")
        top = driver.find_element("css selector", "#backward-panel .sgd")
        save_png(top.screenshot_as_png, folder / "demo_sgd_step.png")
        driver.find_element("id", "sgd-reset").click()
        until_idle(driver, "document.getElementById('weights-state').dataset.steps === '0'")
        panel = driver.find_element("id", "im2col-panel")
        hover(driver, driver.find_elements("css selector", "#im2col-output canvas")[2], 30, 45)
        time.sleep(0.2)
        save_png(panel.screenshot_as_png, folder / "demo_im2col_c1.png", 1100)
        driver.find_element("css selector", "input[value='c3']").click()
        until_idle(driver, "document.getElementById('im2col-shapes').textContent.includes('150,')")
        hover(driver, driver.find_elements("css selector", "#im2col-output canvas")[5], 25, 30)
        time.sleep(0.2)
        save_png(panel.screenshot_as_png, folder / "demo_im2col_c3.png", 1100)
        driver.find_element("css selector", "input[value='backward']").click()
        until_idle(driver, f"{PANEL}.cell !== undefined")
        grid = driver.find_element("id", "im2col-input")
        hover(driver, grid, grid.size["width"] * 0.4, grid.size["height"] * 0.5)
        time.sleep(0.2)
        save_png(panel.screenshot_as_png, folder / "demo_col2im.png", 1100)
        from selenium.webdriver.common.keys import Keys

        slider = driver.find_element("id", "epoch-slider")
        panel = driver.find_element("id", "epochs-panel")
        for key, name in ((Keys.HOME, "demo_epoch_first.png"), (Keys.END, "demo_epoch_last.png")):
            slider.send_keys(key)
            time.sleep(0.3)
            until_idle(driver, "true")
            save_png(panel.screenshot_as_png, folder / name, 1100)
        report(measure(driver, slider))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=take_screenshots.__doc__)
    parser.add_argument("--checkpoint", required=True, help="a best_model.npz whose folder keeps epoch records")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    take_screenshots(args.checkpoint, args.out)
