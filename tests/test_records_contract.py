"""lenet/records.py, the reader of a run's epoch records, held to docs/training.md: what it reads, and what it refuses
in one line. The run folders are written by hand here (tests/demo_helpers.py), following docs/training.md, so these
tests hold any reader to the format, not to a particular writer."""

import json

import numpy as np
import pytest
from demo_helpers import write_run

from lenet import LeNet5
from lenet.checkpoint import save_checkpoint
from lenet.errors import LenetError
from lenet.records import MAX_RECORDS_BYTES, epoch_weights, read_records


def test_a_run_without_records_has_none(tmp_path):
    assert read_records(tmp_path) is None  # a run folder from before lenet kept records
    (tmp_path / "epochs").mkdir()
    assert read_records(tmp_path) is None  # a run before its first records.json


def test_records_and_weights_read_back_as_written(tmp_path):
    models = write_run(tmp_path, epochs=2)
    records = read_records(tmp_path)
    assert records["version"] == 1 and records["activation"] == "sigmoid"
    assert [e["epoch"] for e in records["epochs"]] == [0, 1, 2]
    assert records["epochs"][0]["train_loss"] is None and records["epochs"][0]["layers"]["f7"]["saturated"] is None
    for epoch, model in enumerate(models):
        weights = epoch_weights(tmp_path, epoch)
        assert set(weights) == set(model.state_dict())
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"epoch {epoch} {name}")


def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("epoch", [-1, 3, True, 2.0, "1", 10**9])
def test_an_epoch_that_is_not_there_is_one_line(tmp_path, epoch):
    write_run(tmp_path, epochs=2)
    with pytest.raises(LenetError) as excinfo:
        epoch_weights(tmp_path, epoch)
    one_line(excinfo)


def test_an_epoch_file_of_another_epoch_is_refused(tmp_path):
    write_run(tmp_path, epochs=1)
    save_checkpoint(tmp_path / "epochs" / "epoch_0001.npz", LeNet5(seed=9), {"epoch": 5})
    with pytest.raises(LenetError, match="epoch 5, not 1") as excinfo:
        epoch_weights(tmp_path, 1)
    one_line(excinfo)


def test_a_huge_records_file_is_refused_before_it_is_read(tmp_path):
    write_run(tmp_path, epochs=1)
    with open(tmp_path / "epochs" / "records.json", "r+b") as f:
        f.truncate(MAX_RECORDS_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(LenetError, match="bytes") as excinfo:
        read_records(tmp_path)
    one_line(excinfo)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"version": 1}',
        '{"version": 1, "dataset": "x", "class_names": [], "activation": "sigmoid", "epochs": []}',
        '{"version": NaN}',
        '{"version": 1' + "0" * 100 + "}",
    ],
)
def test_malformed_records_are_one_line(tmp_path, text):
    (tmp_path / "epochs").mkdir()
    (tmp_path / "epochs" / "records.json").write_text(text)
    with pytest.raises(LenetError) as excinfo:
        read_records(tmp_path)
    assert "records.json" in one_line(excinfo)


def test_a_value_out_of_range_is_named(tmp_path):
    write_run(tmp_path, epochs=1)
    path = tmp_path / "epochs" / "records.json"
    records = json.loads(path.read_text())
    records["epochs"][1]["layers"]["c3"]["saturated"] = 1.5
    path.write_text(json.dumps(records))
    with pytest.raises(LenetError, match=r"epochs\[1\]\.layers\.c3\.saturated") as excinfo:
        read_records(tmp_path)
    one_line(excinfo)
