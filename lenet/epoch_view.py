"""The demo's epoch slider: a run's records (lenet/records.py) and what the network did at any epoch.

The served run folder is fixed when the server starts (the checkpoint's folder, or demo.py --run); a request names
an epoch by its number only, never a path, so nothing a request says can reach outside that folder. The records
are read again on every request (they are a few KB an epoch), so a train.py run still writing into the folder shows
its new epochs at the page's next poll. A folder without records (one from before lenet kept them, or a run that
has not yet finished its first epoch) serves as it did: no slider, and a line that says why.
"""

from pathlib import Path

import numpy as np

from . import visualize as vis
from .backend import to_numpy
from .errors import LenetError
from .model import LeNet5
from .records import epoch_weights, read_records
from .wire import pack, scale, value_range


class EpochView:
    """The records of one run folder, and the probe image through the weights of any of its epochs.

    served: the model the server serves; an epoch's weights are loaded into a model of its architecture.
    The caller holds the lock that serialises the models.
    """

    def __init__(self, run_dir, served, test_images=None, test_labels=None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.served = served
        self.test_images, self.test_labels = test_images, test_labels
        self.model = None  # built at the first epoch asked for

    def records(self):
        """(records, None) or (None, the line that says why there is no slider)."""
        if self.run_dir is None:
            return None, "this server was started without a run folder: no epoch slider"
        if not self.run_dir.is_dir():
            return None, f"no run folder at {self.run_dir} yet: the slider appears once a train.py run writes there"
        try:
            records = read_records(self.run_dir)
        except LenetError as e:
            return None, f"the epoch records cannot be read: {e}"
        if records is None:
            return None, (
                f"{self.run_dir} has no epoch records (a run from before lenet kept them, or one trained with "
                "--no-epoch-records, or one still before its first epoch): no slider"
            )
        if records["activation"] != self.served.activation:
            return None, (
                f"the records in {self.run_dir} are of a {records['activation']} network, the served checkpoint "
                f"is {self.served.activation}: serve a checkpoint of that run (demo.py --checkpoint)"
            )
        if not records["epochs"]:
            return None, f"{self.run_dir}: the records hold no epoch yet"
        return records, None

    def status(self):
        """The JSON answer of /api/epochs: the epochs and their figures, or why there is no slider."""
        records, reason = self.records()
        if records is None:
            return {"available": False, "reason": reason, "run": self._shown(), "epochs": []}
        return {
            "available": True,
            "reason": None,
            "run": self._shown(),
            "epochs": [
                {k: e[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "layers")}
                for e in records["epochs"]
            ],
            "probe_batch": records.get("probe"),
        }

    def epoch(self, epoch, index):
        """The JSON answer of /api/epoch: the weights of `epoch` on test image `index`, and its records."""
        records, reason = self.records()
        if records is None:
            raise LenetError(reason)
        last = len(records["epochs"]) - 1
        if not 0 <= epoch <= last:
            raise LenetError(f"epoch {epoch} is not in the records, which hold epochs 0 to {last}")
        if self.test_images is None:
            raise LenetError("this server was started without the test set: no probe image")
        if not 0 <= index < len(self.test_images):
            raise LenetError(f"index {index} is out of range: the test set has {len(self.test_images)} images")
        weights = epoch_weights(self.run_dir, epoch)
        if not all(np.isfinite(w).all() for w in weights.values()):
            raise LenetError(f"the weights of epoch {epoch} are not all finite numbers")
        model = self._model()
        model.load_state_dict(weights)
        image = self.test_images[index]
        grads, logits, outputs = vis.saliency_and_outputs(model, image[None, None])  # d(predicted logit)/d(pixel)
        probs = vis.softmax(to_numpy(logits).astype(np.float64))[0]
        c1, c3 = outputs["act1"][0], outputs["act3"][0]
        entry = records["epochs"][epoch]
        return {
            "epoch": epoch,
            "record": entry,
            "confusion_max": max(max(row) for row in entry["confusion"]),
            "probe": {"index": index, "label": int(self.test_labels[index]), "pixels": pack(image)},
            "probabilities": [float(p) for p in probs],
            "predicted": int(probs.argmax()),
            "filters": {
                name: {"weight": pack(weights[f"{name}.weight"]), "scale": scale(weights[f"{name}.weight"])}
                for name in ("c1", "c3")
            },
            "maps": {
                "c1": {"values": pack(c1), "range": value_range(c1)},
                "c3": {"values": pack(c3), "range": value_range(c3)},
            },
            "saliency": {"values": pack(grads[0]), "scale": scale(grads[0])},
        }

    def _model(self):
        if self.model is None:
            s = self.served
            self.model = LeNet5(s.activation, s.pool, s.backend, s.dtype, input_grad=True)
        return self.model

    def _shown(self):
        return None if self.run_dir is None else str(self.run_dir)
