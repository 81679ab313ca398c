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
import io
import math
import re
from pathlib import Path

import pytest

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
    assert len(marked_examples(ROOT / "README.md")) >= 2
    assert len(marked_examples(ROOT / "docs" / "backprop.md")) >= 2
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
