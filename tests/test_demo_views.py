"""demo.py's API for the backward pass, the SGD step on a private copy, im2col and the epoch slider (issue 22).

Every number the API answers is checked against lenet's own Python: the backward pass against model.backward and each
layer's backward, exactly; im2col's indices against the geometry of a 5x5 window; the epoch view against the weights of
the epoch's file. The run folders are written here by hand, following docs/training.md (tests/demo_helpers.py)."""

import hashlib
import http.client
import json
import threading

import numpy as np
import pytest
from demo_helpers import CLASS_NAMES, META, write_run

from lenet import LeNet5
from lenet import visualize as vis
from lenet.backprop_view import MAX_SESSIONS
from lenet.checkpoint import load_weights, model_from_checkpoint, save_checkpoint
from lenet.demo import DemoServer
from lenet.im2col import im2col
from lenet.inspector import Inspector
from lenet.layers import SoftmaxCrossEntropy
from lenet.wire import unpack

SEED = 11


def start(inspector):
    srv = DemoServer(("127.0.0.1", 0), inspector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def server(epoch_run):
    rng = np.random.default_rng(7)
    images = rng.random((20, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    model, meta = model_from_checkpoint(epoch_run / "best_model.npz", input_grad=True)
    srv = start(Inspector(model, meta, "run/best_model.npz", images, labels, run_dir=epoch_run))
    yield srv
    stop(srv)


def call(srv, path, obj=None, raw=None):
    """(status, answer) of a GET (no body) or a POST."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        if obj is None and raw is None:
            conn.request("GET", path)
        else:
            body = raw if raw is not None else json.dumps(obj).encode()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        timing = response.getheader("Server-Timing")
        answer = json.loads(response.read())
        assert timing and timing.startswith("compute;dur="), timing
        return response.status, answer
    finally:
        conn.close()


def served_copy(srv):
    """A model of our own with the served weights, to compute what the API must answer."""
    served = srv.inspector.model
    model = LeNet5(served.activation, served.pool, input_grad=True)
    model.load_state_dict(served.state_dict())
    return model


def image(seed=1):
    return np.random.default_rng(seed).random((28, 28)).astype(np.float32)


# -- the backward pass -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [3, None])
def test_backward_answers_exactly_what_model_backward_computes(server, target):
    x = image()
    status, answer = call(server, "/api/backward", {"pixels": x.ravel().tolist(), "target": target})
    assert status == 200, answer
    model = served_copy(server)
    logits = model.forward(x[None, None])
    want_target = int(logits.argmax()) if target is None else target
    assert answer["target"] == want_target and answer["target_name"] == CLASS_NAMES[want_target]
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(logits, np.array([want_target]))
    dlogits = loss_fn.backward()
    dx = model.backward(dlogits)
    assert answer["loss"] == float(loss)
    assert answer["probabilities"] == [float(p) for p in loss_fn.probs[0]]
    np.testing.assert_array_equal(unpack(answer["input_grad"]["grad"]), dx[0, 0])
    for name, p in model.named_parameters():
        layer, kind = name.split(".")
        np.testing.assert_array_equal(unpack(answer["params"][layer][f"{kind}_grad"]), p.grad, err_msg=name)
        np.testing.assert_array_equal(unpack(answer["params"][layer][kind]), p.data, err_msg=name)
    # dL/d(output) of every layer, F7 first: each step of the chain is that layer's own backward.
    names = [layer["name"] for layer in answer["layers"]]
    assert names == [name for name, _ in reversed(model.layers)]
    model.forward(x[None, None])
    d = dlogits
    for entry, (name, layer) in zip(answer["layers"], reversed(model.layers), strict=True):
        got = unpack(entry["grad"])
        np.testing.assert_array_equal(got, d[0], err_msg=name)
        assert entry["scale"] == float(np.abs(got).max()) and entry["kind"] == type(layer).__name__
        d = layer.backward(d)
    np.testing.assert_array_equal(d, dx)
    sizes = {s["layer"]: s for s in answer["sizes"]}
    assert [s["layer"] for s in answer["sizes"]] == ["f7", "f6", "f5", "c3", "c1"]
    for name in sizes:
        grad = getattr(model, name).weight.grad.astype(np.float64)
        assert sizes[name]["grad_mean_abs"] == float(np.abs(grad).mean())
        assert sizes[name]["grad_norm"] == pytest.approx(float(np.linalg.norm(grad)), rel=1e-12)


def test_backward_of_a_relu_max_network_too():
    model = LeNet5("relu", "max", seed=4, input_grad=True)
    inspector = Inspector(model, {**META, "architecture": model.config()}, "relu.npz")
    x = image(5)
    answer = inspector.backward({"pixels": x.ravel().tolist(), "target": 1})
    twin = LeNet5("relu", "max", seed=4, input_grad=True)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(twin.forward(x[None, None]), np.array([1]))
    dx = twin.backward(loss_fn.backward())
    np.testing.assert_array_equal(unpack(answer["input_grad"]["grad"]), dx[0, 0])
    np.testing.assert_array_equal(unpack(answer["params"]["c1"]["weight_grad"]), twin.c1.weight.grad)
    assert answer["activation"] == "relu"


# -- one SGD step on a private copy ---------------------------------------------------------------------------------
def test_an_sgd_step_changes_a_private_copy_only(tmp_path):
    checkpoint = tmp_path / "best_model.npz"
    save_checkpoint(checkpoint, LeNet5(seed=SEED), META)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model, meta = model_from_checkpoint(checkpoint, input_grad=True)
    srv = start(Inspector(model, meta, str(checkpoint)))
    try:
        x, lr, target = image(2), 0.05, 4
        pixels = x.ravel().tolist()
        status, first = call(srv, "/api/sgd-step", {"pixels": pixels, "target": target, "lr": lr})
        assert status == 200, first
        token = first["session"]
        assert first["steps"] == 1 and first["lr"] == lr and first["target"] == target
        # What the step must do: one backward pass on the served weights, then w -= lr * dL/dw.
        twin = served_copy(srv)
        loss_fn = SoftmaxCrossEntropy()
        loss = loss_fn.forward(twin.forward(x[None, None]), np.array([target]))
        twin.backward(loss_fn.backward())
        assert first["before"] == {"probabilities": [float(p) for p in loss_fn.probs[0]], "loss": float(loss)}
        stepped = {name: p.data - lr * p.grad for name, p in twin.named_parameters()}
        for name, p in twin.named_parameters():
            layer, kind = name.split(".")
            np.testing.assert_array_equal(unpack(first["params"][layer][kind]), stepped[name], err_msg=name)
            p.data[...] = stepped[name]
        after = vis.softmax(twin.forward(x[None, None]).astype(np.float64))[0]
        np.testing.assert_allclose(first["after"]["probabilities"], after, rtol=1e-6)
        assert first["after"]["loss"] < first["before"]["loss"], "a small step against the gradient lowers the loss"
        assert first["probabilities"] == first["after"]["probabilities"]
        # The served weights and the checkpoint file are as they were; the session's copy keeps its step.
        for name, value in load_weights(checkpoint).items():
            np.testing.assert_array_equal(srv.inspector.model.state_dict()[name], value, err_msg=name)
        assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
        status, served = call(srv, "/api/backward", {"pixels": pixels, "target": target})
        assert served["loss"] == first["before"]["loss"] and served["session"] is None and served["steps"] == 0
        status, mine = call(srv, "/api/backward", {"pixels": pixels, "target": target, "session": token})
        assert mine["loss"] == first["after"]["loss"] and mine["steps"] == 1
        status, second = call(srv, "/api/sgd-step", {"pixels": pixels, "target": target, "lr": lr, "session": token})
        assert second["session"] == token and second["steps"] == 2
        assert second["before"]["loss"] == first["after"]["loss"]
        # Reset: the copy is gone; asking for it is one line; the page starts again from the served weights.
        status, reset = call(srv, "/api/sgd-reset", {"session": token})
        assert status == 200 and reset == {"session": None, "steps": 0, "dropped": True}
        status, gone = call(srv, "/api/backward", {"pixels": pixels, "session": token})
        assert status == 400 and "reset" in gone["error"] and "\n" not in gone["error"]
    finally:
        stop(srv)


def test_private_copies_are_bounded_and_the_oldest_goes():
    inspector = Inspector(LeNet5(seed=1, input_grad=True), META, "x.npz")
    pixels = image(3).ravel().tolist()
    tokens = [inspector.sgd_step({"pixels": pixels, "lr": 0.01})["session"] for _ in range(MAX_SESSIONS + 2)]
    assert len(set(tokens)) == MAX_SESSIONS + 2 and len(inspector.private.copies) == MAX_SESSIONS
    with pytest.raises(vis.LenetError, match="gone"):
        inspector.backward({"pixels": pixels, "session": tokens[0]})
    inspector.backward({"pixels": pixels, "session": tokens[-1]})  # the newest are kept
    # Touching a copy keeps it: the least recently used goes, not the oldest made.
    inspector.backward({"pixels": pixels, "session": tokens[2]})
    inspector.sgd_step({"pixels": pixels, "lr": 0.01})
    inspector.backward({"pixels": pixels, "session": tokens[2]})
    with pytest.raises(vis.LenetError, match="gone"):
        inspector.backward({"pixels": pixels, "session": tokens[3]})


def test_a_step_that_overflows_is_undone_and_said_in_one_line():
    inspector = Inspector(LeNet5(seed=1, input_grad=True), META, "x.npz")
    pixels = image(3).ravel().tolist()
    token = inspector.sgd_step({"pixels": pixels, "lr": 0.01})["session"]
    copy, _ = inspector.private.get(token)
    copy.f7.weight.data[...] = 3e38  # logits overflow to infinity
    kept = copy.state_dict()
    with pytest.raises(vis.LenetError, match="lower one"):
        inspector.sgd_step({"pixels": pixels, "lr": 10, "session": token})
    for name, value in copy.state_dict().items():
        np.testing.assert_array_equal(value, kept[name], err_msg=name)
    assert inspector.private.get(token)[1] == 1


# -- im2col -----------------------------------------------------------------------------------------------------
def window_cells(c, side, oh, ow):
    """The cells of the padded grid (c, side, side) that the 5x5 window at (oh, ow) covers, channel by channel."""
    return sorted(ch * side * side + (oh + i) * side + ow + j for ch in range(c) for i in range(5) for j in range(5))


@pytest.mark.parametrize("layer, channels, side, pad, out", [("c1", 1, 32, 2, 28), ("c3", 6, 14, 0, 10)])
def test_im2col_view_indices_and_numbers_come_from_lenets_im2col(server, layer, channels, side, pad, out):
    x = image(6)
    status, v = call(server, "/api/im2col", {"pixels": x.ravel().tolist(), "layer": layer, "batch": 32, "target": 2})
    assert status == 200, v
    cells, source, cols = unpack(v["cells"]), unpack(v["source"]), unpack(v["cols"])
    column = unpack(v["column"])
    k, length = channels * 25, out * out
    assert cells.shape == source.shape == cols.shape == (k, length) and column.shape == (out, out)
    for oh, ow in ((0, 0), (out // 2, 3), (out - 1, out - 1)):
        col = column[oh, ow]
        assert sorted(cells[:, col]) == window_cells(channels, side, oh, ow), (oh, ow)
    # Each entry of cols is the input cell its index names; the padding reads 0 and has source -1.
    padded = unpack(v["input"])
    assert padded.shape == (channels, side, side)
    np.testing.assert_array_equal(cols, padded.ravel()[cells])
    inner = side - 2 * pad
    ch, rest = np.divmod(cells, side * side)
    y, xx = np.divmod(rest, side)
    in_padding = (y < pad) | (y >= side - pad) | (xx < pad) | (xx >= side - pad)
    np.testing.assert_array_equal(source < 0, in_padding)
    np.testing.assert_array_equal(
        source[~in_padding], (ch * inner * inner + (y - pad) * inner + (xx - pad))[~in_padding]
    )
    # The product is the layer's output; backward's col2im is the layer's backward; coverage counts the windows.
    model = served_copy(server)
    loss_fn = SoftmaxCrossEntropy()
    a, outputs = x[None, None], {}
    for name, lay in model.layers:
        a = lay.forward(a)
        outputs[name] = a
    loss_fn.forward(a, np.array([2]))
    grads, d = {}, loss_fn.backward()
    for name, lay in reversed(model.layers):
        grads[name] = d
        d = lay.backward(d)
    weight = unpack(v["weight"])
    conv = getattr(model, layer)
    np.testing.assert_array_equal(weight, conv.weight.data.reshape(conv.weight.shape[0], -1))
    layer_input = x[None, None] if layer == "c1" else outputs["s2"]
    np.testing.assert_array_equal(cols, im2col(layer_input, 5, 5, pad=pad))
    np.testing.assert_array_equal(unpack(v["output"]), outputs[layer][0])
    np.testing.assert_allclose(
        weight @ cols + conv.bias.data[:, None], unpack(v["output"]).reshape(-1, length), atol=1e-5
    )
    np.testing.assert_array_equal(unpack(v["dout"]), grads[layer][0].reshape(-1, length))
    want_dx = d[0] if layer == "c1" else grads["s2"][0]
    np.testing.assert_array_equal(unpack(v["dx"]), want_dx)
    counts = np.bincount(source[source >= 0], minlength=channels * inner * inner).reshape(channels, inner, inner)
    np.testing.assert_array_equal(unpack(v["coverage"]), counts)
    assert v["coverage_range"] == [float(counts.min()), 25.0]
    f = 6 if layer == "c1" else 16
    assert v["shapes"] == {
        "x": [32, channels, inner, inner],
        "cols": [k, length * 32],
        "weight": [f, k],
        "product": [f, length * 32],
        "out": [32, f, out, out],
    }


# -- the epoch slider -------------------------------------------------------------------------------------------
def test_epochs_lists_the_records(server, epoch_run):
    status, answer = call(server, "/api/epochs")
    assert status == 200 and answer["available"] and answer["reason"] is None
    records = json.loads((epoch_run / "epochs" / "records.json").read_text())
    assert [e["epoch"] for e in answer["epochs"]] == [0, 1, 2, 3]
    for got, want in zip(answer["epochs"], records["epochs"], strict=True):
        assert got["val_acc"] == want["val_acc"] and got["layers"] == want["layers"]


def test_an_epoch_shows_that_epochs_weights_on_the_probe(server, epoch_run):
    models = [LeNet5(seed=e, input_grad=True) for e in range(4)]  # what write_run wrote, epoch by epoch
    records = json.loads((epoch_run / "epochs" / "records.json").read_text())
    probe = server.inspector.test_images[5]
    seen = []
    for epoch in (1, 3):
        status, answer = call(server, f"/api/epoch?epoch={epoch}&index=5")
        assert status == 200, answer
        model = models[epoch]
        np.testing.assert_array_equal(unpack(answer["filters"]["c1"]["weight"]), model.c1.weight.data)
        np.testing.assert_array_equal(unpack(answer["filters"]["c3"]["weight"]), model.c3.weight.data)
        grads, logits = vis.saliency(model, probe[None, None])
        outputs = vis.layer_outputs(model, probe[None, None])
        np.testing.assert_array_equal(unpack(answer["saliency"]["values"]), grads[0])
        np.testing.assert_array_equal(unpack(answer["maps"]["c3"]["values"]), outputs["act3"][0])
        assert answer["probabilities"] == [float(p) for p in vis.softmax(logits.astype(np.float64))[0]]
        assert answer["record"] == records["epochs"][epoch]
        assert answer["probe"]["index"] == 5 and answer["probe"]["label"] == int(server.inspector.test_labels[5])
        assert answer["confusion_max"] == max(max(row) for row in records["epochs"][epoch]["confusion"])
        seen.append(unpack(answer["filters"]["c1"]["weight"]))
    assert not np.array_equal(*seen), "another epoch, other filters"


def test_a_run_folder_from_before_epoch_records_still_serves(tmp_path):
    checkpoint = tmp_path / "best_model.npz"
    save_checkpoint(checkpoint, LeNet5(seed=1), META)  # a run folder as lenet wrote them before: no epochs/
    model, meta = model_from_checkpoint(checkpoint, input_grad=True)
    srv = start(Inspector(model, meta, str(checkpoint), run_dir=tmp_path))
    try:
        status, answer = call(srv, "/api/epochs")
        assert status == 200 and answer["available"] is False and answer["epochs"] == []
        assert "no epoch records" in answer["reason"] and "\n" not in answer["reason"]
        status, answer = call(srv, "/api/epoch?epoch=0")
        assert status == 400 and "no epoch records" in answer["error"]
        status, answer = call(srv, "/api/backward", {"pixels": image().ravel().tolist()})
        assert status == 200
    finally:
        stop(srv)


def broken_run(tmp_path, change):
    """A run folder of two epochs whose records or files `change` spoils; the reason the API gives."""
    write_run(tmp_path, epochs=1)
    change(tmp_path / "epochs")
    model, meta = model_from_checkpoint(tmp_path / "best_model.npz", input_grad=True)
    images = np.zeros((3, 28, 28), np.float32)
    inspector = Inspector(model, meta, "x", images, np.zeros(3, int), run_dir=tmp_path)
    return inspector


def edit_records(change):
    def edit(folder):
        records = json.loads((folder / "records.json").read_text())
        change(records)
        (folder / "records.json").write_text(json.dumps(records))

    return edit


SPOILED = {
    "not JSON": lambda f: (f / "records.json").write_text("{not json"),
    "another version": edit_records(lambda r: r.update(version=7)),
    "epochs out of order": edit_records(lambda r: r["epochs"].reverse()),
    "a confusion matrix of 9 rows": edit_records(lambda r: r["epochs"][1]["confusion"].pop()),
    "a negative count": edit_records(lambda r: r["epochs"][1]["confusion"][0].__setitem__(0, -1)),
    "an accuracy of 3": edit_records(lambda r: r["epochs"][1].update(val_acc=3)),
    "a missing layer": edit_records(lambda r: r["epochs"][0]["layers"].pop("c3")),
    "a norm that is a string": edit_records(lambda r: r["epochs"][0]["layers"]["f5"].update(grad_norm="big")),
    "a ReLU network's records": edit_records(lambda r: r.update(activation="relu")),
    "too deep": lambda f: (f / "records.json").write_text('{"version": 1, "epochs": ' + "[" * 50 + "]" * 50 + "}"),
}


@pytest.mark.parametrize("name", list(SPOILED))
def test_malformed_records_mean_no_slider_and_one_line(tmp_path, name):
    inspector = broken_run(tmp_path, SPOILED[name])
    status = inspector.epoch_status()
    assert status["available"] is False and "\n" not in status["reason"] and len(status["reason"]) < 400, status
    with pytest.raises(vis.LenetError):
        inspector.epoch(0, 0)


def test_a_spoiled_epoch_file_is_one_line_and_the_others_still_serve(tmp_path):
    inspector = broken_run(tmp_path, lambda f: (f / "epoch_0001.npz").write_bytes(b"PK\x03\x04 not a zip"))
    assert inspector.epoch_status()["available"]
    with pytest.raises(vis.LenetError, match="epoch_0001.npz"):
        inspector.epoch(1, 0)
    assert inspector.epoch(0, 0)["epoch"] == 0


# -- every new input is checked ----------------------------------------------------------------------------------
PIXELS = [0.5] * 784
BAD = {
    "backward: unknown field": ("/api/backward", {"pixels": PIXELS, "targt": 1}),
    "backward: no image": ("/api/backward", {"target": 1}),
    "backward: target 10": ("/api/backward", {"pixels": PIXELS, "target": 10}),
    "backward: target -1": ("/api/backward", {"pixels": PIXELS, "target": -1}),
    "backward: target a string": ("/api/backward", {"pixels": PIXELS, "target": "3"}),
    "backward: target true": ("/api/backward", {"pixels": PIXELS, "target": True}),
    "backward: target 2.5": ("/api/backward", {"pixels": PIXELS, "target": 2.5}),
    "backward: session a number": ("/api/backward", {"pixels": PIXELS, "session": 5}),
    "backward: session with a slash": ("/api/backward", {"pixels": PIXELS, "session": "../../etc/passwd"}),
    "backward: session too long": ("/api/backward", {"pixels": PIXELS, "session": "a" * 65}),
    "backward: unknown session": ("/api/backward", {"pixels": PIXELS, "session": "A" * 16}),
    "backward: pixels out of range": ("/api/backward", {"pixels": [2.0] * 784}),
    "sgd-step: no lr": ("/api/sgd-step", {"pixels": PIXELS}),
    "sgd-step: lr 0": ("/api/sgd-step", {"pixels": PIXELS, "lr": 0}),
    "sgd-step: lr negative": ("/api/sgd-step", {"pixels": PIXELS, "lr": -0.1}),
    "sgd-step: lr 11": ("/api/sgd-step", {"pixels": PIXELS, "lr": 11}),
    "sgd-step: lr a string": ("/api/sgd-step", {"pixels": PIXELS, "lr": "0.1"}),
    "sgd-step: lr 1e400": ("/api/sgd-step", '{"pixels": [' + ",".join(["0.5"] * 784) + '], "lr": 1e400}'),
    "sgd-step: lr NaN": ("/api/sgd-step", '{"pixels": [' + ",".join(["0.5"] * 784) + '], "lr": NaN}'),
    "sgd-reset: not an object": ("/api/sgd-reset", [1, 2]),
    "sgd-reset: unknown field": ("/api/sgd-reset", {"session": None, "all": True}),
    "sgd-reset: bad session": ("/api/sgd-reset", {"session": "no way!"}),
    "im2col: no layer": ("/api/im2col", {"pixels": PIXELS}),
    "im2col: layer c2": ("/api/im2col", {"pixels": PIXELS, "layer": "c2"}),
    "im2col: layer f5": ("/api/im2col", {"pixels": PIXELS, "layer": "f5"}),
    "im2col: batch 0": ("/api/im2col", {"pixels": PIXELS, "layer": "c1", "batch": 0}),
    "im2col: batch too big": ("/api/im2col", {"pixels": PIXELS, "layer": "c1", "batch": 65537}),
    "im2col: batch 1.5": ("/api/im2col", {"pixels": PIXELS, "layer": "c1", "batch": 1.5}),
    "epoch: none given": ("/api/epoch", None),
    "epoch: a word": ("/api/epoch?epoch=last", None),
    "epoch: a path": ("/api/epoch?epoch=../../etc/passwd", None),
    "epoch: negative": ("/api/epoch?epoch=-1", None),
    "epoch: not in the records": ("/api/epoch?epoch=4", None),
    "epoch: a huge number": ("/api/epoch?epoch=99999999999999", None),
    "epoch: index out of range": ("/api/epoch?epoch=1&index=20", None),
    "epoch: a long query": ("/api/epoch?epoch=1&x=" + "a" * 300, None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_to_the_new_calls_are_400_with_one_line(server, name):
    path, body = BAD[name]
    if isinstance(body, str):
        status, answer = call(server, path, raw=body.encode())
    else:
        status, answer = call(server, path, body)
    assert status == 400, (name, answer)
    reason = answer["error"]
    assert reason and "\n" not in reason and len(reason) < 400 and "Traceback" not in reason, reason
    assert call(server, "/api/backward", {"pixels": PIXELS})[0] == 200
