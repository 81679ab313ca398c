"""The options of a training run, declared once (lenet/options.py): train.py's argparse arguments, TrainConfig.check()
and the resume schema (lenet/resume.py) are derived from that declaration, and these tests hold them to it, value by
value, so the three cannot disagree."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from lenet.backend import cpu_cores
from lenet.commands.train import build_parser, parse_args
from lenet.errors import LenetError
from lenet.options import OPTIONS, TrainConfig
from lenet.resume import check_resume_state

# Text to try on the command line for each option that takes a value: every choice and a wrong one, and both
# sides of every limit.
LIMIT = str(4 * cpu_cores())
TRIED = {
    "epochs": ["0", "1", "30"],
    "batch_size": ["-1", "0", "1", "32"],
    "lr": ["-1", "0", "1e-3", "nan", "inf", "1e38"],
    "momentum": ["-0.1", "0", "0.9", "inf"],
    "weight_decay": ["-1e-9", "0", "5e-4", "nan"],
    "seed": ["-1", "0", "12345"],
    "val_fraction": ["0", "0.2", "0.999", "1", "nan", "-0.5"],
    "limit": ["0", "1", "2", "1000"],
    "threads": ["0", "1", LIMIT, str(int(LIMIT) + 1)],
    "out": ["runs/x"],
}
for _name, _option in OPTIONS.items():
    if _option.allowed is not None and _option.allowed.choices is not None:
        TRIED[_name] = [*_option.allowed.choices, "bogus"]


def parser_actions():
    return {action.dest: action for action in build_parser()._actions if action.dest != "help"}


def test_every_option_is_a_flag_with_its_declared_default_choices_and_help():
    actions = parser_actions()
    assert set(actions) == set(OPTIONS)
    for name, option in OPTIONS.items():
        action = actions[name]
        assert action.option_strings == [option.flag], name
        assert action.default == (None if option.command_fills else option.default), name
        choices = option.allowed.choices if option.allowed is not None else None
        assert (tuple(action.choices) if action.choices is not None else None) == choices, name
        assert action.help == option.help.format(default=option.default), name
        if option.type is bool:  # a switch that turns the default around
            assert isinstance(action, argparse._StoreFalseAction if option.default else argparse._StoreTrueAction)


def test_the_command_line_without_flags_is_the_default_config():
    args = parse_args([])
    given = vars(args).pop("given")
    assert given == set()
    filled = {name for name, option in OPTIONS.items() if option.command_fills}
    assert {k: v for k, v in vars(args).items() if k not in filled} == {
        k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k not in filled
    }


def verdicts(name, text, capsys):
    """(argparse accepts, TrainConfig.check() accepts, the resume schema accepts) for `--flag text`."""
    option = OPTIONS[name]
    try:
        parse_args([option.flag, text])
        command_line = True
    except SystemExit:
        command_line = False
        assert capsys.readouterr().err.count("\n") == 1  # one line
    value = option.type(text)
    try:
        TrainConfig(**{name: value}).check()
        check = True
    except LenetError:
        check = False
    meta = last_npz_meta()
    meta["train_config"][name] = json.loads(json.dumps(value))  # as it would come back from the file
    try:
        check_resume_state(meta, {"steps": np.array(3), "lr": np.array(1e-3)}, "last.npz")
        schema = True
    except LenetError:
        schema = False
    return command_line, check, schema


def last_npz_meta():
    rng_state = json.loads(json.dumps(np.random.default_rng([0, 1]).bit_generator.state))
    history = [[1, 2.0, 0.5, 2.0, 0.5, 1.0]]
    config = TrainConfig(epochs=2).stored()
    return {"epoch": 1, "best_val_acc": 0.5, "history": history, "rng_state": rng_state, "train_config": config}


@pytest.mark.parametrize("name, text", [(name, text) for name, texts in TRIED.items() for text in texts])
def test_the_command_line_the_check_and_the_schema_agree_on_every_value(name, text, capsys):
    command_line, check, schema = verdicts(name, text, capsys)
    assert command_line == check, (name, text, command_line, check)
    if OPTIONS[name].on_resume == "command":
        # How to run (--threads, --out): the resuming command's own value is used, never the stored one, so the
        # schema checks only its type: a run saved on a machine with more cores goes on here.
        assert schema
    else:
        assert schema == check, (name, text, schema, check)


def test_every_option_that_takes_a_value_is_tried():
    untried = {name for name, option in OPTIONS.items() if option.type is not bool} - set(TRIED)
    assert untried == {"data_dir"}  # the command line also wants it to exist: test_cli.py and test_train.py


def test_every_option_of_the_wrong_type_is_refused_by_the_check_and_the_schema():
    wrong = {bool: "yes", int: 2.5, float: "0.1", str: 3}
    for name, option in OPTIONS.items():
        with pytest.raises(LenetError, match=f"^{option.flag} must be "):
            TrainConfig(**{name: wrong[option.type]}).check()
        meta = last_npz_meta()
        meta["train_config"][name] = wrong[option.type]
        if option.stored:
            with pytest.raises(LenetError, match=f"train_config.{name} must be "):
                check_resume_state(meta, {"steps": np.array(3), "lr": np.array(1e-3)}, "last.npz")


def test_the_thread_limit_is_four_per_core_everywhere(capsys):
    limit = 4 * cpu_cores()
    assert verdicts("threads", str(limit), capsys) == (True, True, True)
    assert verdicts("threads", str(limit + 1), capsys)[:2] == (False, False)
    with pytest.raises(LenetError, match=f"^--threads must be a whole number from 1 to {limit} "):
        TrainConfig(threads=limit + 1).check()
