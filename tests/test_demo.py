"""demo.py: the JSON API (bad requests, paths, the body cap, concurrency) and the page in a real headless browser.

Run as a program, this file also takes a screenshot of the page with a drawing and prints the latency (docs/demo.md):
    .venv/bin/python tests/test_demo.py --checkpoint runs/fashion-mnist/best_model.npz --screenshot docs/demo.png
"""

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from demo_helpers import (
    CANVAS_IS_NOT_BLANK,
    CLASS_NAMES,
    FASHION,
    META,
    ROOT,
    browser_missing,
    demo_process,
    draw_stroke,
    headless_chromium,
    latency_line,
    page_ready,
    require_browser_and_data,
    wait_for,
)
from PIL import Image

from lenet import LeNet5
from lenet import visualize as vis
from lenet.checkpoint import save_checkpoint
from lenet.demo import MAX_BODY, DemoServer
from lenet.inspector import Inspector

# -- the API, on a server in this process ---------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    rng = np.random.default_rng(7)
    images = rng.random((50, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    inspector = Inspector(LeNet5(seed=11, input_grad=True), META, "test/best_model.npz", images, labels)
    srv = DemoServer(("127.0.0.1", 0), inspector)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(srv, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post(srv, obj=None, raw=None):
    body = raw if raw is not None else json.dumps(obj).encode()
    return request(srv, "POST", "/api/predict", body, {"Content-Type": "application/json"})


def expected(pixels, seed=11):
    """What the API must answer for `pixels` (28, 28): computed here on a model of our own."""
    model = LeNet5(seed=seed, input_grad=True)
    x = np.asarray(pixels, dtype=np.float32)[None, None]
    grads, logits = vis.saliency(model, x)
    outputs = vis.layer_outputs(model, x)
    return vis.softmax(logits.astype(np.float64))[0], grads[0], outputs["act1"][0], outputs["act3"][0]


def assert_still_serving(srv):
    status, _, body = post(srv, {"pixels": [0.0] * 784})
    assert status == 200 and len(json.loads(body)["probabilities"]) == 10


def png_base64(array, mode="L"):
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_predict_pixels_answers_what_lenet_computes(server):
    pixels = np.random.default_rng(1).random((28, 28)).astype(np.float32)
    status, headers, body = post(server, {"pixels": pixels.ravel().tolist()})
    assert status == 200 and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    probs, grads, c1, c3 = expected(pixels)
    np.testing.assert_allclose(answer["probabilities"], probs, rtol=1e-6)
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-9)
    assert answer["predicted"] == int(probs.argmax()) and answer["predicted_name"] == CLASS_NAMES[probs.argmax()]
    np.testing.assert_allclose(answer["input"], pixels.ravel(), atol=5e-5)
    assert answer["c1"]["shape"] == [6, 28, 28] and answer["c3"]["shape"] == [16, 10, 10]
    np.testing.assert_allclose(answer["c1"]["values"], c1.ravel(), atol=5e-5)
    np.testing.assert_allclose(answer["c3"]["values"], c3.ravel(), atol=5e-5)
    np.testing.assert_allclose(answer["saliency"], grads.ravel(), atol=5e-7)
    assert np.abs(answer["saliency"]).max() > 0
    # 28 rows of 28 are taken too.
    status, _, body = post(server, {"pixels": pixels.tolist()})
    assert status == 200 and json.loads(body)["probabilities"] == answer["probabilities"]


def test_predict_image_is_preprocessed_like_the_data_set(server):
    drawing = np.full((280, 280), 255, dtype=np.uint8)  # a white pad with a black bar, as the page sends it
    drawing[40:240, 120:150] = 0
    status, _, body = post(server, {"image": "data:image/png;base64," + png_base64(drawing)})
    assert status == 200, body
    answer = json.loads(body)
    want = vis.to_dataset_image(drawing / 255.0, *vis.preprocessing_for("fashion-mnist"))
    np.testing.assert_allclose(answer["input"], want.ravel(), atol=5e-5)
    np.testing.assert_allclose(answer["probabilities"], expected(want)[0], rtol=1e-6)


def test_an_mnist_checkpoint_gets_mnists_class_names_and_preprocessing():
    meta = {"dataset": "mnist", "class_names": [str(d) for d in range(10)], "epoch": 1, "val_acc": 0.9}
    inspector = Inspector(LeNet5(seed=2, input_grad=True), meta, "mnist/best_model.npz")
    drawing = np.full((200, 200), 255, dtype=np.uint8)
    drawing[30:170, 90:110] = 0  # a "1"
    answer = inspector.predict({"image": png_base64(drawing)})
    assert answer["predicted_name"] == str(answer["predicted"])
    x = np.asarray(answer["input"]).reshape(28, 28)
    rows = np.nonzero(x.max(axis=1) > 0.1)[0]
    assert rows[-1] - rows[0] + 1 in (19, 20, 21), "MNIST's 20-pixel box, not Fashion-MNIST's 28"
    with pytest.raises(vis.LenetError, match="without the test set"):
        inspector.test_image()


def test_info_and_test_images(server):
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["dataset"] == "fashion-mnist" and info["epoch"] == 3
    assert info["class_names"] == CLASS_NAMES and info["checkpoint"] == "test/best_model.npz"
    assert info["test_images"] == 50
    status, _, body = request(server, "GET", "/api/test-image?index=7")
    image = json.loads(body)
    assert status == 200 and image["index"] == 7
    assert image["label"] == int(server.inspector.test_labels[7])
    np.testing.assert_array_equal(np.float32(image["pixels"]), server.inspector.test_images[7].ravel())
    seen = {json.loads(request(server, "GET", "/api/test-image")[2])["index"] for _ in range(20)}
    assert len(seen) > 1, "a random image each time"


def pixels_text(first):
    """A JSON body of 784 numbers whose first one is written as `first` (JSON cannot say NaN; Python's can)."""
    return ('{"pixels": [' + ", ".join([first] + ["0.5"] * 783) + "]}").encode()


BAD_REQUESTS = {
    "malformed JSON": b'{"pixels": [0.1, 0.2',
    "not UTF-8": b'{"pixels": "\xff\xfe"}',
    "not an object": b"[0.5, 0.5]",
    "neither pixels nor image": b'{"pixel": []}',
    "both pixels and image": json.dumps({"pixels": [0.0] * 784, "image": ""}).encode(),
    "pixels not a list": b'{"pixels": "0.5"}',
    "too few numbers": json.dumps({"pixels": [0.5] * 783}).encode(),
    "too many numbers": json.dumps({"pixels": [0.5] * 785}).encode(),
    "ragged rows": json.dumps({"pixels": [[0.5] * 28] * 27 + [[0.5] * 27]}).encode(),
    "NaN": pixels_text("NaN"),
    "Infinity": pixels_text("Infinity"),
    "minus Infinity": pixels_text("-Infinity"),
    "a number that overflows": pixels_text("1e400"),
    "an integer of 5000 digits": pixels_text("9" * 5000),
    "above 1": json.dumps({"pixels": [1.5] + [0.5] * 783}).encode(),
    "below 0": json.dumps({"pixels": [-0.1] + [0.5] * 783}).encode(),
    "a string among the numbers": json.dumps({"pixels": ["0.5"] + [0.5] * 783}).encode(),
    "a boolean among the numbers": json.dumps({"pixels": [True] + [0.5] * 783}).encode(),
    "null among the numbers": json.dumps({"pixels": [None] + [0.5] * 783}).encode(),
    "deeply nested": b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "image not a string": b'{"image": 12}',
    "image not base64": b'{"image": "@@@not base64@@@"}',
    "image not an image": json.dumps({"image": base64.b64encode(b"GIF89a but not really").decode()}).encode(),
    "image data URL not base64": b'{"image": "data:image/png,abc"}',
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_400_with_one_line_and_the_server_keeps_serving(server, name):
    status, headers, body = post(server, raw=BAD_REQUESTS[name])
    assert status == 400, (name, body[:200])
    reason = json.loads(body)["error"]
    assert reason and "\n" not in reason and len(reason) < 300, reason
    assert "Traceback" not in reason
    assert_still_serving(server)


def test_a_decompression_bomb_is_refused_before_decoding(server):
    huge = io.BytesIO()
    Image.new("1", (8000, 8000), 1).save(huge, format="PNG")  # 64 million pixels in a few kB
    status, _, body = post(server, {"image": base64.b64encode(huge.getvalue()).decode()})
    assert status == 400 and "at most" in json.loads(body)["error"]
    assert_still_serving(server)


def test_bad_test_image_index_is_400(server):
    for query in ("index=50", "index=-1", "index=abc"):
        status, _, body = request(server, "GET", f"/api/test-image?{query}")
        assert status == 400 and "\n" not in json.loads(body)["error"], query


def test_body_cap_length_required_and_bad_content_length(server):
    # Over the cap: refused from the header alone, nothing of the body sent.
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=20)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=20)
    conn.putrequest("POST", "/api/predict")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=20)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 400 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()
    for length in ("-5", "lots"):
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=20)
        conn.putrequest("POST", "/api/predict")
        conn.putheader("Content-Length", length)
        conn.endheaders()
        assert conn.getresponse().status == 400, length
        conn.close()
    assert_still_serving(server)


def test_only_the_page_is_served_and_unknown_paths_are_404(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'id="pad"' in body
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, _ = request(server, "GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
    for path in (
        "/nothing",
        "/static/",
        "/static/missing.js",
        "/static/../demo.py",
        "/static/%2e%2e/demo.py",
        "/static/..%2fdemo.py",
        "/../../etc/passwd",
        "//etc/passwd",
        "/lenet/demo.py",
        "/demo.py",
        "/static/index.html/../../demo.py",
        "/api",
        "/api/predict",  # GET of a POST API
    ):
        status, _, body = request(server, "GET", path)
        assert status == 404, path
        assert b"import" not in body and b"root:" not in body, path
    status, _, _ = post_to(server, "/api/nothing")
    assert status == 404
    assert_still_serving(server)


def post_to(srv, path):
    return request(srv, "POST", path, b"{}", {"Content-Type": "application/json"})


def test_200_concurrent_requests_from_8_threads_are_all_answered_correctly(server):
    rng = np.random.default_rng(3)
    inputs = rng.random((200, 28, 28)).astype(np.float32)
    model = LeNet5(seed=11)
    want = vis.softmax(model.forward(inputs[:, None]).astype(np.float64))

    def ask(i):
        status, _, body = post(server, {"pixels": inputs[i].ravel().tolist()})
        return i, status, json.loads(body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(200)))
    assert all(status == 200 for _, status, _ in answers)
    for i, _, answer in answers:
        np.testing.assert_allclose(answer["probabilities"], want[i], rtol=1e-5, atol=1e-7, err_msg=f"request {i}")
        np.testing.assert_allclose(answer["input"], inputs[i].ravel(), atol=5e-5)


# -- demo.py as a program ---------------------------------------------------------------------------


def write_checkpoint(folder, seed=0):
    path = Path(folder) / "best_model.npz"
    save_checkpoint(path, LeNet5(seed=seed), META)
    return path


def run_demo(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_demo_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "a-file").write_text("not a run folder")
    for args, words in (
        (["--checkpoint", str(tmp_path / "none.npz")], "no such file"),
        (["--run", str(tmp_path / "a-file")], "not a folder"),
        (["--port", "70000"], "0..65535"),
        (["--port", "x"], "invalid int value"),
    ):
        result = run_demo(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("demo.py: error:"), result.stderr
        assert words in lines[0]


needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason=f"Fashion-MNIST is not installed in {FASHION}"
)


@needs_fashion
def test_demo_on_a_busy_port_names_port_and_port_0_finds_a_free_one(tmp_path):
    checkpoint = write_checkpoint(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = run_demo("--checkpoint", str(checkpoint), "--data-dir", str(FASHION), "--port", str(taken))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0] == (
            f"demo.py: error: cannot listen on 127.0.0.1:{taken}: Address already in use; "
            "choose another with --port N, or --port 0 for any free one"
        )
        with demo_process(checkpoint) as url:  # --port 0, while the other port is still taken
            port = int(url.rstrip("/").rsplit(":", 1)[1])
            assert url == f"http://127.0.0.1:{port}/" and port not in (0, taken), url
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("GET", "/api/info")
            assert json.loads(conn.getresponse().read())["dataset"] == "fashion-mnist"
            conn.close()


@needs_fashion
def test_demo_serves_and_stops_on_ctrl_c(tmp_path):
    with demo_process(write_checkpoint(tmp_path)) as url:
        host, port = url.split("//")[1].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        conn.close()
        assert info["test_images"] == 10000 and info["epoch"] == 3


# -- the page in a real browser ----------------------------------------------------------------------


def test_the_browser_tests_skip_reason_says_how_to_install_the_browser(tmp_path):
    if browser_missing(()):
        pytest.skip(browser_missing(()))  # no selenium: that reason names its own command
    present, missing = tmp_path / "chromium", tmp_path / "chromedriver"
    present.write_text("a browser")
    reason = browser_missing((str(present), str(missing)))
    assert f"; {missing} missing: " in reason, reason  # only what is missing is named
    assert reason.endswith("on Debian/Ubuntu install them with: sudo apt-get install chromium chromium-driver")
    assert browser_missing((str(present),)) is None


def bars(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#bars .bar-row'), r => [r.dataset.class, r.dataset.p]);"
    )


def stroke_latencies(driver, strokes):
    """Draw each stroke, waiting for its answer; the page's times from release to updated bars (ms)."""
    for points in strokes:
        wait_for(driver, "document.body.dataset.busy !== '1'")
        before = driver.execute_script("return window.lenetStats.latencies.length;")
        draw_stroke(driver, points)
        wait_for(driver, f"window.lenetStats.latencies.length > {before}")
    wait_for(driver, "document.body.dataset.busy !== '1'")
    return driver.execute_script("return window.lenetStats.latencies;")


def trousers():
    """Strokes that fill a pair of trousers, as Fashion-MNIST draws them: a waistband and two solid legs.

    In pixels from the pad's centre; neighbouring strokes overlap, so the legs come out filled.
    """
    strokes = [[(-50, -112), (50, -112)], [(-50, -100), (50, -100)]]
    for k in range(5):  # five overlapping strokes a leg, fanning out towards the hem
        strokes.append([(-50 + 9 * k, -105), (-62 + 10 * k, 0), (-75 + 11 * k, 112)])
        strokes.append([(50 - 9 * k, -105), (62 - 10 * k, 0), (75 - 11 * k, 112)])
    return strokes


TROUSERS = trousers()


def test_page_in_a_headless_browser(tmp_path):
    require_browser_and_data()
    checkpoint = write_checkpoint(tmp_path, seed=5)  # a run folder from before epoch records: no epochs/
    with demo_process(checkpoint) as url, headless_chromium() as driver:
        page_ready(driver, url)  # the first screen: test image #0 already through the network
        assert "fashion-mnist" in driver.find_element("id", "meta").text
        assert driver.find_element("id", "source").get_attribute("data-index") == "0"
        assert driver.find_element("id", "prediction").text in CLASS_NAMES
        for selector in ("#input", "#c1 canvas", "#c3 canvas", "#saliency", "#chain canvas", "#im2col-cols"):
            assert driver.execute_script(CANVAS_IS_NOT_BLANK, selector), f"{selector} is blank on the first screen"
        assert "outline drawing of trousers reads as a dress" in driver.find_element("id", "about-data").text
        # The run folder from before this change still serves: no slider, and a line that says why.
        wait_for(driver, "document.getElementById('epochs-panel').dataset.available === '0'")
        assert "no epoch records" in driver.find_element("id", "epochs-status").text
        assert not driver.find_element("id", "epochs-body").is_displayed()
        latencies = stroke_latencies(driver, TROUSERS)
        rows = bars(driver)
        assert [int(k) for k, _ in rows] == list(range(10)), "a bar for every class"
        probs = [float(p) for _, p in rows]
        assert sum(probs) == pytest.approx(1, abs=1e-9) and min(probs) >= 0
        predicted = int(driver.find_element("id", "prediction").get_attribute("data-class"))
        assert predicted == int(np.argmax(probs))
        for selector in ("#input", "#c1 canvas", "#c3 canvas", "#saliency"):
            assert driver.execute_script(CANVAS_IS_NOT_BLANK, selector), f"{selector} is blank"
        print(
            f"\nstroke end -> updated bars (ms), {len(latencies)} strokes: " + ", ".join(f"{t:.1f}" for t in latencies)
        )

        before = int(driver.execute_script("return window.lenetStats.responses;"))
        driver.find_element("id", "random").click()
        wait_for(driver, f"window.lenetStats.responses > {before} && document.body.dataset.busy !== '1'")
        index = int(driver.find_element("id", "source").get_attribute("data-index"))
        shown = [float(p) for _, p in bars(driver)]
        shown_class = int(driver.find_element("id", "prediction").get_attribute("data-class"))
    want_class, want_probs = predict_like_test_py(checkpoint, index)
    assert shown_class == want_class, (index, shown_class, want_class)
    np.testing.assert_allclose(shown, want_probs, rtol=1e-6, atol=1e-9)


def predict_like_test_py(checkpoint, index, data_dir=FASHION):
    """What test.py's code predicts for test image `index`: its model, its data, its batched predict."""
    from lenet.backend import to_numpy
    from lenet.checkpoint import model_from_checkpoint
    from lenet.data import load_dataset
    from lenet.fast import DataParallel, default_threads, fuse
    from lenet.trainer import predict

    model, meta = model_from_checkpoint(checkpoint)
    images, _, _ = load_dataset(meta["dataset"], "test", data_dir=data_dir)
    images = images.astype(model.dtype)
    runner = DataParallel(fuse(model), default_threads(np), processes=False)
    predicted = to_numpy(predict(runner.forward, images))
    runner.close()
    probs = vis.softmax(model.forward(images[index : index + 1]).astype(np.float64))[0]
    return int(predicted[index]), probs


def take_screenshot(checkpoint, path, data_dir):
    """Draw trousers on the page served for `checkpoint`, save a screenshot, print the latencies."""
    with demo_process(checkpoint, data_dir) as url, headless_chromium(1250, 720) as driver:
        page_ready(driver, url)
        latencies = stroke_latencies(driver, TROUSERS)
        for _ in range(3):  # more strokes for the latency figure
            driver.find_element("id", "clear").click()
            latencies += stroke_latencies(driver, TROUSERS)
        answer = driver.find_element("id", "prediction").text
        png = driver.get_screenshot_as_png()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").save(path, optimize=True)
    print(f"wrote {path}; the page answered {answer!r}")
    print(latency_line("stroke end -> every panel updated", latencies) + f"; machine: {os.cpu_count()} cores")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=take_screenshot.__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--screenshot", default="docs/demo.png")
    parser.add_argument("--data-dir", default=str(FASHION))
    args = parser.parse_args()
    take_screenshot(args.checkpoint, args.screenshot, args.data_dir)
