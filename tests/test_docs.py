"""The documentation: README.md and docs/*.md run their marked examples, and their links land where they say.

A ```python block right after `<!-- tested -->` is run (the tested blocks of one file in order, in one namespace,
as a reader pastes them); after `<!-- tested: output below -->` the next block, a ```text block, is what it must
print. Numbers in that output are compared loosely (errors below the gradient checker's 1e-6 tolerance are
rounding noise and may differ between machines), words exactly.

Every relative link must point at a file that exists; a `#heading` anchor into a .md file at a heading of that
file; a `#Lx-Ly` line anchor into a .py file at a range that holds a `def` or `class` line, and, where the link text
names a definition (`Conv2d.backward`, `test_linear_gradients`), at that definition.
"""

import contextlib
import dataclasses
import io
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_data, run_script
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOLERANCE = 1e-6  # lenet.gradcheck.TOLERANCE: printed errors below it are rounding noise

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
MARKER = re.compile(r"^<!--\s*tested(:\s*output below)?\s*-->$")
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")
DEFINITION = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+(\w+)")
NAMED = re.compile(r"^`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)`$")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def rel(path):
    return path.relative_to(ROOT).as_posix()


def parse(text):
    """(prose lines with fenced blocks blanked out, [(info, body, first line number, marker or None)])."""
    prose, blocks = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2), i
        previous = next((s.strip() for s in reversed(lines[:start]) if s.strip()), "")
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        blocks.append((info, "\n".join(lines[start + 1 : i]), start + 1, MARKER.match(previous)))
        prose.extend([""] * (i + 1 - start))
        i += 1
    return "\n".join(prose), blocks


def marked_examples(path):
    """[(code, expected stdout or None, line)] of the marked python blocks of a Markdown file."""
    _, blocks = parse(path.read_text())
    examples = []
    for k, (info, body, line, marker) in enumerate(blocks):
        if marker is None:
            continue
        assert info == "python", f"{rel(path)}:{line}: <!-- tested --> must come before a ```python block"
        expected = None
        if marker.group(1):
            assert k + 1 < len(blocks) and blocks[k + 1][0] == "text", (
                f"{rel(path)}:{line}: 'output below' needs a ```text block after the example"
            )
            expected = blocks[k + 1][1]
        examples.append((body, expected, line))
    return examples


def same_output(printed, shown):
    """Words and layout exactly; numbers to 1e-3 relative, and any two below the 1e-6 tolerance as equal."""
    skeleton = [line.rstrip() for line in NUMBER.sub("#", printed).strip().splitlines()]
    if skeleton != [line.rstrip() for line in NUMBER.sub("#", shown).strip().splitlines()]:
        return False
    for a, b in zip(NUMBER.findall(printed), NUMBER.findall(shown), strict=True):
        a, b = float(a), float(b)
        if not (math.isclose(a, b, rel_tol=1e-3) or (abs(a) < TOLERANCE and abs(b) < TOLERANCE)):
            return False
    return True


@pytest.mark.parametrize("path", [p for p in DOCS if marked_examples(p)], ids=rel)
def test_tested_examples_run_and_print_what_the_page_shows(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__docs__"}
    for code, expected, line in marked_examples(path):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{rel(path)}:{line}", "exec"), namespace)
        if expected is not None:
            assert same_output(out.getvalue(), expected), (
                f"{rel(path)}:{line} printed\n{out.getvalue()}\nbut the page shows\n{expected}"
            )


def test_the_teaching_pages_have_marked_examples():
    """So that the test above cannot pass by finding nothing."""
    assert len(marked_examples(ROOT / "README.md")) >= 1
    assert len(marked_examples(ROOT / "docs" / "backprop.md")) >= 4  # two derivations, check_layer on Scale twice
    assert all(expected for _, expected, _ in marked_examples(ROOT / "README.md"))


def test_same_output_compares_words_exactly_and_numbers_loosely():
    assert same_output("input 1.1e-09\na     5.8e-11\n", "input 3.0e-10\na     5.8e-11")
    assert not same_output("input 1.1e-09\n", "input 2.0e-06")  # one passes the tolerance, one fails it
    assert not same_output("at (2,): analytic 14.9", "at (2,): analytic 29.9")
    assert not same_output("True", "False")


def heading_slugs(path):
    """GitHub's anchors for the headings of a Markdown file."""
    prose, _ = parse(path.read_text())
    slugs, seen = set(), {}
    for line in prose.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def anchor_problem(target, first, last, text):
    """Why lines first..last of the Python file `target` are not what a link with this text names, or None."""
    lines = target.read_text().splitlines()
    if not 1 <= first <= last <= len(lines):
        return f"lines {first}-{last} are outside the file's {len(lines)} lines"
    found = [(k, m) for k in range(first - 1, last) if (m := DEFINITION.match(lines[k]))]
    if not found:
        return f"lines {first}-{last} hold no def or class line"
    named = NAMED.match(text.strip())
    if named is None:
        return None
    *owners, name = named.group(1).split(".")
    hits = [(k, m) for k, m in found if m.group(2) == name]
    if not hits:
        return f"lines {first}-{last} do not define {name}"
    if owners:
        k, m = hits[0]
        indent = len(m.group(1))
        enclosing = next(
            (d for j in range(k - 1, -1, -1) if (d := DEFINITION.match(lines[j])) and len(d.group(1)) < indent), None
        )
        if enclosing is None or enclosing.group(2) != owners[-1]:
            return f"{name} at line {k + 1} is not inside {owners[-1]}"
    return None


def links(path):
    """[(text, target, line)] of the links and images of a Markdown file, outside code blocks."""
    prose, _ = parse(path.read_text())
    found = []
    for number, line in enumerate(prose.splitlines(), 1):
        found.extend((m.group(1), m.group(2), number) for m in LINK.finditer(line))
    return found


def link_problems(path):
    problems = []
    for text, target, line in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel(path)}:{line} [{text}]({target})"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if not fragment:
            continue
        if dest.suffix == ".md":
            if fragment not in heading_slugs(dest):
                problems.append(f"{where}: no heading with anchor #{fragment}")
            continue
        m = LINE_ANCHOR.match(fragment)
        if m is None or dest.suffix != ".py":
            problems.append(f"{where}: anchor #{fragment} is neither a heading nor a line range of a .py file")
            continue
        first = int(m.group(1))
        problem = anchor_problem(dest, first, int(m.group(2) or first), text)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_relative_links_point_at_existing_files_and_definitions(path):
    assert link_problems(path) == []


def test_backprop_page_links_the_code_and_the_tests_by_line():
    targets = [t for _, t, _ in links(ROOT / "docs" / "backprop.md")]
    for part in ("lenet/layers.py#L", "lenet/im2col.py#L", "lenet/model.py#L", "lenet/fast/convpool.py#L"):
        assert any(part in t for t in targets), part
    for part in ("tests/test_layers.py#L", "tests/test_model.py#L", "tests/test_im2col.py#L"):
        assert any(part in t for t in targets), part


def test_the_anchor_check_catches_a_drifted_link():
    layers = ROOT / "lenet" / "layers.py"
    lines = layers.read_text().splitlines()
    conv = next(k for k, s in enumerate(lines, 1) if s.startswith("class Conv2d"))
    linear = next(k for k, s in enumerate(lines, 1) if s.startswith("class Linear"))
    backward = next(k for k in range(conv, linear) if lines[k - 1].strip().startswith("def backward"))
    assert anchor_problem(layers, backward, backward + 3, "`Conv2d.backward`") is None
    assert "not inside Conv2d" in anchor_problem(layers, linear, len(lines), "`Conv2d.backward`")
    assert "do not define forward" in anchor_problem(layers, backward, backward, "`Conv2d.forward`")
    assert "no def or class" in anchor_problem(layers, backward + 1, backward + 2, "the backward pass")
    assert "outside" in anchor_problem(layers, len(lines), len(lines) + 5, "the end")


def math_problems(path):
    """GitHub renders $`...`$ inline math and ```math blocks reliably; a bare $ or $$ is where it mangles `_`."""
    prose, blocks = parse(path.read_text())
    spans = re.findall(r"\$`([^`]*)`\$", prose)
    rest = re.sub(r"`[^`]*`", "", re.sub(r"\$`[^`]*`\$", "", prose))
    problems = [f"bare $ in: {line.strip()}" for line in rest.splitlines() if "$" in line]
    for tex in spans + [body for info, body, _, _ in blocks if info == "math"]:
        depth = 0
        for ch in re.sub(r"\\[{}]", "", tex):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth < 0:
                break
        if depth != 0:
            problems.append(f"unbalanced braces in: {tex}")
        if re.search(r"\\begin\{(align|eqnarray)\*?\}", tex):
            problems.append(f"use aligned, not align, in: {tex}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_math_uses_the_forms_github_renders(path):
    assert math_problems(path) == []


# -- the shell commands of README.md and docs/*.md, as pasted ---------------------------------------------------
#
# Every line of a ```bash or ```sh block is a command to paste: its `\` continuations joined, its `#` comment
# dropped, split at &&, ||, ; and | as the shell reads it. Each command is one of:
# - a lenet command (train.py, test.py, visualize.py, demo.py, benchmarks/*.py or tests/*.py run as a program,
#   `.venv/bin/lenet-NAME`, `.venv/bin/python -m lenet ...`): its words must parse with that command's own argument
#   parser, so every flag and value exists; and unless NOT_RUN lists it, it runs in a folder that holds what a
#   reader has by then (READER_HAS) and must exit 0;
# - `.venv/bin/python -m lenet.gradcheck`, `mkdir -p ...`: run;
# - anything else: listed in NOT_RUN with the reason it cannot run in a test, or the test fails. So a new command
#   cannot slip through unchecked, and a stale entry of NOT_RUN is an error too.
# Inline code in the prose that starts with `.venv/bin/` is a command as well: parsed, not run.

SHELL_BLOCKS = ("bash", "sh", "shell")
SEPARATORS = {"&&", "||", ";", "|", "&"}
VENV = ".venv/bin/"
INLINE_COMMAND = re.compile(r"`(\.venv/bin/[^`]+)`")
TRAIN_MAX_IMAGES, TRAIN_MAX_EPOCHS = 5000, 3  # a train command this small runs in a test: seconds
DOC_COMMAND_TIMEOUT_S = 300

DEMO_SERVES = "a server that runs until Ctrl-C (tests/test_demo.py and test_demo_page.py serve the page)"
SCREENSHOTS = "drives chromium on a trained run and rewrites docs/'s pictures (under pytest the file tests the page)"
BENCHMARK = "minutes of timing (tests/test_benchmarks.py runs it with --quick)"
EPOCHS = "times real epochs of train.py for minutes (tests/test_benchmarks.py runs it on a few hundred images)"
NOT_RUN = {
    "python3 -m venv .venv": "makes the environment these tests run in",
    ".venv/bin/pip install -e .": "installs lenet into the environment these tests run in",
    ".venv/bin/pip install -e '.[dev]' torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu": (
        "installs lenet and the tests' packages into the environment these tests run in"
    ),
    ".venv/bin/python -m pytest": "this test suite",
    ".venv/bin/python train.py": "the default recipe, 30 epochs on 48,000 images: minutes",
    ".venv/bin/python train.py --resume": "continues a stopped 30-epoch run",
    ".venv/bin/python train.py --overwrite": "starts the default recipe over: 30 epochs",
    ".venv/bin/pip install -e '.[cuda12]'": "downloads CuPy and the CUDA libraries",
    ".venv/bin/python train.py --backend cupy": "needs an NVIDIA GPU (tests/test_cuda.py runs the GPU path on one)",
    ".venv/bin/python train.py --data-dir data/mine --limit 2000 --epochs 2 --out runs/mine": (
        "downloads Fashion-MNIST into the new folder: the tests reach no network (tests/test_data.py downloads "
        "from a local server)"
    ),
    ".venv/bin/python demo.py": DEMO_SERVES,
    ".venv/bin/python demo.py --checkpoint runs/x/best_model.npz": DEMO_SERVES,
    ".venv/bin/python demo.py --checkpoint a/best_model.npz --run runs/y": DEMO_SERVES,
    ".venv/bin/python demo.py --port 0": DEMO_SERVES,
    ".venv/bin/python tests/test_demo_page.py --checkpoint runs/fashion-mnist/best_model.npz --out docs": SCREENSHOTS,
    ".venv/bin/python tests/test_demo.py --checkpoint runs/fashion-mnist/best_model.npz --screenshot docs/demo.png": (
        SCREENSHOTS
    ),
    ".venv/bin/python benchmarks/run.py": BENCHMARK,
    ".venv/bin/python benchmarks/run.py --busy 1": BENCHMARK,
    ".venv/bin/python benchmarks/run.py --batch-sizes 32,256,1024,4096": BENCHMARK,
    ".venv/bin/python benchmarks/run.py --batch-sizes 32,256 --busy 1": BENCHMARK,
    ".venv/bin/python benchmarks/epoch.py --threads 1,2": EPOCHS,
    ".venv/bin/python benchmarks/epoch.py --limit 20000 --threads 1,2 --repeats 3": EPOCHS,
    ".venv/bin/python benchmarks/epoch.py --limit 20000 --threads 1,2 --repeats 3 --busy 1": EPOCHS,
    ".venv/bin/python benchmarks/epoch.py --limit 20000 --threads 1,2 --repeats 3 --busy 2": EPOCHS,
    ".venv/bin/python benchmarks/epoch.py --repeats 3": EPOCHS,
}


@dataclasses.dataclass
class Command:
    words: list
    where: str  # file:line, for the messages

    @property
    def text(self):
        """The command as NOT_RUN names it."""
        return shlex.join(self.words)


def commands_in_line(line, where):
    """The commands of one shell line, as the shell splits it."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True  # words as the shell has them: `--lr` and `2e-3`, `'.[dev]'` as `.[dev]`
    commands, words = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    return [Command(w, where) for w in commands if w]


def shell_lines(path):
    """[(line, where)] of the ```bash and ```sh blocks of a Markdown file: each line as the shell reads it, with its
    backslash continuations joined."""
    _, blocks = parse(path.read_text())
    lines = []
    for info, body, first, _ in blocks:
        if info not in SHELL_BLOCKS:
            continue
        pending, start = "", None
        for number, line in enumerate(body.splitlines(), first + 1):
            start = number if not pending else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append((pending + line, f"{rel(path)}:{start}"))
            pending = ""
    return lines


def shell_commands(path):
    """[Command] of the ```bash and ```sh blocks of a Markdown file, in order."""
    return [command for line, where in shell_lines(path) for command in commands_in_line(line, where)]


def inline_commands(path):
    """[Command] of the inline code of a Markdown file's prose that starts with `.venv/bin/`."""
    prose, _ = parse(path.read_text())
    found = []
    for number, line in enumerate(prose.splitlines(), 1):
        for m in INLINE_COMMAND.finditer(line):
            found.extend(commands_in_line(m.group(1), f"{rel(path)}:{number}"))
    return found


@dataclasses.dataclass
class LenetCommand:
    """How to run a command of lenet's: `kind` script (a .py file of this checkout), module (python -m), or entry
    (a console script, `module:function`); its arguments, and which lenet command it is, if any (train, test, ...)."""

    kind: str
    target: str
    args: list
    name: str  # lenet's command (train, test, visualize, demo), else the script's or module's name

    def argv(self):
        """The command as a test runs it: this Python for .venv/bin/python, this checkout's files."""
        if self.kind == "script":
            return [sys.executable, self.target, *self.args]
        if self.kind == "module":
            return [sys.executable, "-m", self.target, *self.args]
        installed = Path(sys.executable).with_name(f"lenet-{self.name}")  # the environment's console script
        if installed.is_file():
            return [str(installed), *self.args]
        return [sys.executable, "-m", "lenet", self.name, *self.args]  # an environment with lenet on its path only

    def has_parser(self):
        if self.kind == "script":  # a shim of lenet's commands (train.py, ...), or a program with its own parser
            shim = Path(self.target).parent == ROOT and (ROOT / "lenet" / "commands" / Path(self.target).name).is_file()
            return shim or "parse_args" in Path(self.target).read_text()
        return self.target != "lenet.gradcheck"  # python -m lenet and the console scripts parse their arguments


def lenet_command(words):
    """The LenetCommand that words name, or None for any other program."""
    program, rest = words[0], words[1:]
    if program == f"{VENV}python" and rest[:1] == ["-m"] and len(rest) > 1:
        module, args = rest[1], rest[2:]
        if module == "lenet":
            return LenetCommand("module", module, args, args[0] if args and not args[0].startswith("-") else "lenet")
        if module == "lenet.gradcheck":
            return LenetCommand("module", module, args, "gradcheck")
        return None
    if program == f"{VENV}python" and rest and rest[0].endswith(".py") and (ROOT / rest[0]).is_file():
        return LenetCommand("script", str(ROOT / rest[0]), rest[1:], Path(rest[0]).stem)
    if program.startswith(f"{VENV}lenet-"):
        name = program.removeprefix(f"{VENV}lenet-")
        if (ROOT / "lenet" / "commands" / f"{name}.py").is_file():
            return LenetCommand("entry", f"lenet.commands.{name}:main", rest, name)
    return None


def flag_value(args, flag):
    """The value given to `flag` in args (`--flag V` or `--flag=V`), or None."""
    for k, word in enumerate(args):
        if word == flag and k + 1 < len(args):
            return args[k + 1]
        if word.startswith(f"{flag}="):
            return word.split("=", 1)[1]
    return None


def problem_with(command):
    """None for a command that this test runs or NOT_RUN lists; else what is wrong with it, in words."""
    if command.text in NOT_RUN or command.words[0] == "mkdir":
        return None
    how = lenet_command(command.words)
    if how is None:
        return (
            f"{command.where}: `{command.text}` is not a command this test knows: write it with {VENV}python or "
            f"{VENV}lenet-NAME, or list it in NOT_RUN with the reason it cannot run in a test"
        )
    if how.name == "train" and not {"-h", "--help"} & set(how.args):
        limit, epochs = flag_value(how.args, "--limit"), flag_value(how.args, "--epochs")
        if limit is None or epochs is None or int(limit) > TRAIN_MAX_IMAGES or int(epochs) > TRAIN_MAX_EPOCHS:
            return (
                f"{command.where}: `{command.text}` trains too long for a test: give it --limit <= {TRAIN_MAX_IMAGES} "
                f"and --epochs <= {TRAIN_MAX_EPOCHS}, or list it in NOT_RUN with the reason"
            )
    return None


def runs_here(command):
    return command.text not in NOT_RUN and problem_with(command) is None


# The parse check: one Python per page runs every command's own entry point with argparse's parse_args replaced by
# one that parses and then stops, so nothing after the parsing runs. `mkdir -p` is done, as a later --data-dir
# needs its folder.
PARSE_ONLY = r"""
import argparse, contextlib, importlib, io, json, os, runpy, sys

class Parsed(BaseException):
    pass

real_parse_args = argparse.ArgumentParser.parse_args

def parse_then_stop(self, args=None, namespace=None):
    real_parse_args(self, args, namespace)
    raise Parsed

argparse.ArgumentParser.parse_args = parse_then_stop
outcomes = []
for kind, target, args, argv0 in json.load(sys.stdin):
    if kind == "mkdir":
        for folder in args:
            os.makedirs(folder, exist_ok=True)
        outcomes.append("parsed")
        continue
    said = io.StringIO()
    sys.argv = [argv0, *args]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
            if kind == "script":
                sys.path.insert(0, os.path.dirname(target))
                runpy.run_path(target, run_name="__main__")
            elif kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                module, function = target.split(":")
                sys.exit(getattr(importlib.import_module(module), function)())
        outcomes.append("finished without parsing its arguments")
    except Parsed:
        outcomes.append("parsed")
    except SystemExit as e:
        outcomes.append("help" if e.code in (0, None) else f"exit status {e.code}: {said.getvalue().strip()}")
print(json.dumps(outcomes))
"""


def checkout_env(env):
    """env, with this checkout's lenet importable from any folder: CI's floors environment runs the suite without
    installing lenet (where it is installed, from this checkout, it is the same package)."""
    return {**env, "PYTHONPATH": str(ROOT)}


def parse_problems(commands, cwd, env):
    """What the parse check found wrong with each lenet command of `commands` (a list of lines)."""
    cases, checked = [], []
    for command in commands:
        if command.words[0] == "mkdir":
            cases.append(("mkdir", "", [w for w in command.words[1:] if not w.startswith("-")], "mkdir"))
            checked.append(None)
            continue
        how = lenet_command(command.words)
        if how is None or not how.has_parser():
            continue
        argv0 = f"lenet-{how.name}" if how.kind == "entry" else how.target
        cases.append((how.kind, how.target, how.args, argv0))
        checked.append(command)
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY],
        input=json.dumps(cases),
        cwd=cwd,
        env=checkout_env(env),
        capture_output=True,
        text=True,
        timeout=DOC_COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    problems = []
    for command, outcome in zip(checked, json.loads(done.stdout.splitlines()[-1]), strict=True):
        if command is None or outcome == "parsed":
            continue
        if outcome == "help" and {"-h", "--help"} & set(command.words):
            continue
        problems.append(f"{command.where}: `{command.text}`: {outcome}")
    return problems, len(checked)


def test_shell_lines_split_as_the_shell_splits_them():
    line = "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' x==1 ; a | b  # a comment && c"
    words = [c.words for c in commands_in_line(line, "here")]
    assert words == [
        ["python3", "-m", "venv", ".venv"],
        [".venv/bin/pip", "install", "-e", ".[dev]", "x==1"],
        ["a"],
        ["b"],
    ]
    assert commands_in_line(".venv/bin/pip install -e '.[dev]'", "")[0].text == ".venv/bin/pip install -e '.[dev]'"


def test_the_pages_have_shell_commands_to_check():
    """So that the tests below cannot pass by finding nothing."""
    readme = [c.text for c in shell_commands(ROOT / "README.md")]
    assert ".venv/bin/python train.py" in readme and ".venv/bin/python -m pytest" in readme
    assert sum(len(shell_commands(p)) for p in DOCS) >= 30
    assert sum(lenet_command(c.words) is not None for p in DOCS for c in inline_commands(p)) >= 5


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_every_shell_command_runs_here_or_says_why_not(path):
    problems = [why for c in shell_commands(path) if (why := problem_with(c))]
    assert problems == []


def test_not_run_lists_only_commands_that_the_pages_have():
    written = {c.text for p in DOCS for c in shell_commands(p)}
    assert sorted(set(NOT_RUN) - written) == []


@pytest.mark.parametrize("path", [p for p in DOCS if shell_commands(p) or inline_commands(p)], ids=rel)
def test_every_command_parses_with_its_own_arguments(path, tmp_path, offline_env):
    problems, checked = parse_problems([*shell_commands(path), *inline_commands(path)], tmp_path, offline_env)
    assert problems == []


def test_the_parse_check_catches_a_flag_that_does_not_exist(tmp_path, offline_env):
    lines = [
        ".venv/bin/python train.py --epochs 2 --no-such-flag",
        ".venv/bin/lenet-test --show many",
        ".venv/bin/python -m lenet visualize --index 3 --checkpoint x.npz",
        ".venv/bin/python benchmarks/layers.py --batch-size 32",
        ".venv/bin/python train.py --help",
    ]
    commands = [c for line in lines for c in commands_in_line(line, "example")]
    problems, checked = parse_problems(commands, tmp_path, offline_env)
    assert checked == 5
    assert len(problems) == 2, problems
    assert "unrecognized arguments: --no-such-flag" in problems[0]
    assert "--show" in problems[1] and "many" in problems[1]


# What a reader has when pasting the pages' commands: the README's training run (runs/fashion-mnist), the best-found
# recipe's (runs/best, results.md) and a photo of their own (shoe.jpg, results.md's visualize.py --image). A short
# run stands in for both runs.
READER_HAS = ("runs/fashion-mnist", "runs/best", "shoe.jpg")


@pytest.fixture(scope="module")
def reader_files(tmp_path_factory, offline_env):
    folder = tmp_path_factory.mktemp("reader")
    trained = run_script(
        "train.py",
        ["--limit", 1000, "--epochs", 2, "--no-progress", "--out", folder / "runs" / "fashion-mnist"],
        offline_env,
    )
    assert trained.returncode == 0, trained.stderr
    shutil.copytree(folder / "runs" / "fashion-mnist", folder / "runs" / "best")
    photo = Image.new("RGB", (120, 90), "white")  # a dark shoe on a light table, as a phone would take it
    ImageDraw.Draw(photo).polygon([(10, 70), (15, 40), (50, 45), (80, 55), (110, 62), (110, 75), (10, 75)], "black")
    photo.save(folder / "shoe.jpg")
    assert sorted(p.relative_to(folder).as_posix() for p in [*folder.glob("runs/*"), *folder.glob("*.jpg")]) == sorted(
        READER_HAS
    )
    return folder


@needs_data
@pytest.mark.parametrize("path", [p for p in DOCS if shell_commands(p)], ids=rel)
def test_every_command_that_can_run_runs_as_pasted(path, reader_files, tmp_path, offline_env):
    reader = tmp_path / "reader"
    shutil.copytree(reader_files, reader)
    failures = []
    for command in shell_commands(path):
        if not runs_here(command):
            continue
        if command.words[0] == "mkdir":
            for folder in command.words[1:]:
                if not folder.startswith("-"):
                    (reader / folder).mkdir(parents=True, exist_ok=True)
            continue
        done = subprocess.run(
            lenet_command(command.words).argv(),
            cwd=reader,
            env=checkout_env(offline_env),
            capture_output=True,
            text=True,
            timeout=DOC_COMMAND_TIMEOUT_S,
        )
        if done.returncode != 0:
            failures.append(f"{command.where}: `{command.text}` exited {done.returncode}: {done.stderr[-2000:]}")
    assert failures == []


def test_ci_runs_the_readmes_test_command():
    """.ci/run installs and tests with the README's test command, word for word: CI runs what a reader pastes."""
    (readme,) = [line.strip() for line, _ in shell_lines(ROOT / "README.md") if line.rstrip().endswith(" -m pytest")]
    install, test = readme.rsplit(" && ", 1)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
