"""What the demo's JSON API computes: the Inspector holds the served model, its checkpoint's description, the test
images, the page sessions' private weights and the run folder's records, and answers each API call from them.

Every number comes from lenet's own forward and backward passes. One lock serialises all model work: the layers
keep caches and scratch arrays from call to call. Each method takes a parsed JSON request (a dict) or query values,
checks every field it reads (lenet/wire.py), and returns a JSON-able dict; bad input is one LenetError line.
"""

import random
import threading
import time
from importlib.metadata import PackageNotFoundError, metadata

import numpy as np

from . import visualize as vis
from .backend import to_numpy
from .backprop_view import MAX_LR, PrivateWeights, backward_pass, backward_view
from .epoch_view import EpochView
from .errors import LenetError
from .im2col_view import CONV_INPUTS, im2col_view
from .version import __version__
from .wire import (
    bool_field,
    check_object,
    choice_field,
    image_bytes,
    int_field,
    number_field,
    pixels_from_json,
    scale,
    session_field,
    value_range,
)

MAX_BATCH = 65536  # for the shapes the im2col view states; nothing of that size is computed

# What the page says about how a data set's images look, so that a drawing can look the same.
ABOUT_DATA = {
    "fashion-mnist": (
        "Fashion-MNIST's images are filled, centred silhouettes, bright on black: each garment fills the 28 x 28 "
        "square. Draw the whole shape filled in: an outline drawing of trousers reads as a dress."
    ),
    "mnist": (
        "MNIST's images are handwritten digits, white strokes on black, scaled into a 20 x 20 box and centred by "
        "their centre of mass. Draw one digit, large."
    ),
}


def project_url():
    """The project's address from the installed package's metadata ([project.urls] in pyproject.toml), or None."""
    try:
        meta = metadata("lenet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return None
    for entry in meta.get_all("Project-URL") or []:
        return entry.partition(",")[2].strip() or None
    return meta.get("Home-page")


def _rounded(a, digits=4):
    """A flat list of floats with a few digits: maps are drawn as colours, so more would only cost bytes."""
    return [round(float(v), digits) for v in np.asarray(a, dtype=np.float64).ravel()]


IMAGE_FIELDS = ("pixels", "image")


class TimedLock:
    """A lock that remembers, per thread, how long its last acquisition waited: the server's Server-Timing header
    then tells the time spent computing from the time spent queueing behind another request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()

    def __enter__(self):
        start = time.perf_counter()
        self._lock.acquire()
        self._local.waited = getattr(self._local, "waited", 0.0) + time.perf_counter() - start
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def take_waited(self):
        """Seconds this thread waited for the lock since the last call."""
        waited, self._local.waited = getattr(self._local, "waited", 0.0), 0.0
        return waited


class Inspector:
    """The model, its checkpoint's description, the test images and the run folder, and what the API computes."""

    def __init__(self, model, meta, checkpoint_name, test_images=None, test_labels=None, run_dir=None):
        self.model, self.meta = model, meta
        self.class_names = list(meta.get("class_names") or [str(i) for i in range(10)])
        self.box, self.centring = vis.preprocessing_for(meta.get("dataset"))
        self.test_images, self.test_labels = test_images, test_labels
        self.checkpoint_name = checkpoint_name
        self.private = PrivateWeights(model)
        self.epochs = EpochView(run_dir, model, test_images, test_labels)
        self.lock = TimedLock()

    def info(self):
        meta = self.meta
        train_config = meta.get("train_config") if isinstance(meta.get("train_config"), dict) else {}
        return {
            "checkpoint": self.checkpoint_name,
            "dataset": meta.get("dataset"),
            "about_data": ABOUT_DATA.get(meta.get("dataset"), ABOUT_DATA["mnist"]),
            "epoch": meta.get("epoch"),
            "val_acc": meta.get("val_acc"),
            "architecture": meta.get("architecture"),
            "activation": self.model.activation,
            "train_batch_size": train_config.get("batch_size"),
            "class_names": self.class_names,
            "test_images": 0 if self.test_images is None else len(self.test_images),
            "lenet_version": __version__,
            "project_url": project_url(),
            "max_lr": MAX_LR,
            "max_batch": MAX_BATCH,
        }

    def test_image(self, index=None):
        if self.test_images is None:
            raise LenetError("this server was started without the test set")
        n = len(self.test_images)
        if index is None:
            index = random.randrange(n)
        if not 0 <= index < n:
            raise LenetError(f"index {index} is out of range: the test set has {n} images")
        label = int(self.test_labels[index])
        return {
            "index": index,
            "label": label,
            "label_name": self.class_names[label],
            "pixels": [float(v) for v in self.test_images[index].ravel()],  # exact: float32 -> double
        }

    def image(self, request):
        """The (28, 28) image of a request: its 'pixels' as given, or its 'image' made like the data set's."""
        if ("pixels" in request) == ("image" in request):
            raise LenetError("give exactly one of 'pixels' (784 numbers) and 'image' (base64)")
        if "pixels" in request:
            return pixels_from_json(request["pixels"])
        grey = vis.decode_image(image_bytes(request["image"]), source="the image")
        return vis.to_dataset_image(grey, self.box, self.centring)

    # -- the forward view ----------------------------------------------------------------------------------
    def predict(self, request):
        """POST /api/predict: an image -> probabilities, the C1 and C3 maps, saliency (see lenet/demo.py)."""
        check_object(request, IMAGE_FIELDS, "with a 'pixels' or an 'image' member")
        return self.inspect(self.image(request))

    def inspect(self, x):
        """(28, 28) in [0, 1] -> probabilities, the maps of C1 and C3 after their activation, saliency."""
        model = self.model
        batch = x[None, None].astype(model.dtype)
        with self.lock:
            grad, logits, outputs = vis.saliency_and_outputs(model, batch)  # backward of the predicted logit
        probs = vis.softmax(to_numpy(logits).astype(np.float64))[0]
        c1, c3 = outputs["act1"][0], outputs["act3"][0]
        predicted = int(probs.argmax())
        return {
            "input": _rounded(x),
            "pixels": [float(v) for v in batch.ravel()],  # exact: what the other views are asked about
            "probabilities": [float(p) for p in probs],
            "predicted": predicted,
            "predicted_name": self.class_names[predicted],
            "c1": {"shape": list(c1.shape), "values": _rounded(c1), "range": value_range(c1)},
            "c3": {"shape": list(c3.shape), "values": _rounded(c3), "range": value_range(c3)},
            "saliency": _rounded(grad[0], 6),
            "saliency_scale": scale(grad[0]),
        }

    # -- the backward pass and the private weights ---------------------------------------------------------
    def _image_and_target(self, request, allowed):
        check_object(request, (*IMAGE_FIELDS, *allowed), "with 'pixels' and the fields named below")
        x = self.image(request)
        target = int_field(request, "target", 0, len(self.class_names) - 1)
        return x, target, session_field(request)

    def backward(self, request):
        """POST /api/backward: {pixels|image, target?, session?, weights?} -> the loss and every gradient, F7 back
        to C1, and the weights themselves unless "weights" is false."""
        x, target, token = self._image_and_target(request, ("target", "session", "weights"))
        weights = bool_field(request, "weights", default=True)
        with self.lock:
            model, steps = self.private.get(token)
            view = backward_view(model, x, target, self.class_names, weights=weights)
        return {**view, "session": token, "steps": steps}

    def sgd_step(self, request):
        """POST /api/sgd-step: {pixels|image, target?, session?, lr} -> one SGD step on the session's private copy.

        Answers the probabilities and loss before and after the step, and the backward view at the new weights.
        """
        x, target, token = self._image_and_target(request, ("target", "session", "lr"))
        lr = number_field(request, "lr", 0, MAX_LR)
        with self.lock:
            token, steps, target, before, after = self.private.sgd_step(token, x, target, lr)
            model, _ = self.private.get(token)
            view = backward_view(model, x, target, self.class_names, result=after)
        return {
            **view,
            "session": token,
            "steps": steps,
            "lr": lr,
            "before": {"probabilities": [float(p) for p in before["probabilities"]], "loss": before["loss"]},
            "after": {"probabilities": [float(p) for p in after["probabilities"]], "loss": after["loss"]},
        }

    def sgd_reset(self, request):
        """POST /api/sgd-reset: {session} -> the session's private copy is dropped; the served weights again."""
        check_object(request, ("session",), "with the 'session' to reset")
        token = session_field(request)
        with self.lock:
            dropped = token is not None and self.private.reset(token)
        return {"session": None, "steps": 0, "dropped": dropped}

    # -- im2col --------------------------------------------------------------------------------------------
    def im2col(self, request):
        """POST /api/im2col: {pixels|image, layer, batch?, target?, session?} -> the convolution as a product."""
        x, target, token = self._image_and_target(request, ("layer", "batch", "target", "session"))
        layer = choice_field(request, "layer", tuple(CONV_INPUTS))
        batch = int_field(request, "batch", 1, MAX_BATCH, default=1)
        with self.lock:
            model, _ = self.private.get(token)
            result = backward_pass(model, x, target)
            view = im2col_view(model, layer, result, batch)
        return {**view, "target": result["target"], "session": token}

    # -- the epoch slider ----------------------------------------------------------------------------------
    def epoch_status(self):
        """GET /api/epochs: the records of the served run folder, or why there are none."""
        return self.epochs.status()

    def epoch(self, epoch, index):
        """GET /api/epoch?epoch=N&index=I: the network at epoch N on test image I (the probe)."""
        with self.lock:
            return self.epochs.epoch(epoch, index)
