"""Every ``causaldiffae ...`` command in README.md and docs/*.md parses with the real parser, names
files and shipped names that exist (or that the same page makes first), and the quick ones run.

So a renamed option, a changed ``--do`` syntax or a tour that queries a folder it never made fails
here instead of on a new user's machine.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from causaldiffae.cli import UsageError, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The reader's own files that the pages use as examples (they cannot exist in the repository).
#: A new name in a page must be a real file, a shipped name, an output of a command on the same
#: page (or of a script it runs), a file the page writes out in a code block, or be added here on
#: purpose.
PLACEHOLDERS = {"my.dot", "my_graph.dot", "my_folder", "world.dot", "data", "my_graph.yaml", "my_images/", "my_images", "my.yaml", "a.png", "b.png", "my_data", "my_data/"}

#: Pages that work on what another page makes (evaluation.md scores the run training.md trains,
#: counterfactuals.md queries the run getting-started.md trains):
#: the outputs of the other page's commands count as made.
BUILDS_ON = {"evaluation.md": ("training.md",), "counterfactuals.md": ("getting-started.md",)}

FENCE = re.compile(r"^```")


@dataclass
class DocCommand:
    page: Path
    line: int
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: causaldiffae {shlex.join(self.argv)}"


def _segments(line: str) -> list[str]:
    return [s.strip() for s in re.split(r"&&|;|\|\|", line) if s.strip()]


def _argv(text: str) -> list[str] | None:
    words = shlex.split(text, comments=True)
    return words[1:] if words and words[0] == "causaldiffae" else None


def extract(page: Path) -> tuple[list[DocCommand], dict[str, str | None]]:
    """The page's commands (fenced lines, and inline code spans with at least one option) and the
    files it writes out in code blocks (a block whose first line is ``// path`` or ``# path``; None
    for what a ``python script.py --out X`` line on the page writes)."""
    lines = page.read_text().splitlines()
    commands: list[DocCommand] = []
    files: dict[str, str] = {}
    prose: list[tuple[int, str]] = []
    in_fence, block, start = False, [], 0
    pending, first = "", 0  # a shell line continued with a trailing backslash
    for i, line in enumerate(lines, 1):
        if in_fence and line.rstrip().endswith("\\"):
            pending, first = pending + line.rstrip()[:-1] + " ", first or i
            continue
        if pending:
            line, pending = pending + line, ""
        i, first = (first or i), 0
        if FENCE.match(line.strip()):
            if in_fence:
                m = re.match(r"^(?://|#)\s*([\w./-]+\.\w+)\s*$", block[0].strip()) if block else None
                if m:
                    files[m.group(1)] = "\n".join(block[1:]) + "\n"
            in_fence, block, start = not in_fence, [], i
            continue
        if in_fence:
            block.append(line)
            for seg in _segments(line):
                if seg.startswith("causaldiffae ") and not ("[-" in seg or "..." in seg):  # not a synopsis
                    commands.append(DocCommand(page, i, _argv(seg)))
                elif seg.startswith("python "):  # a script the page runs: what it writes counts as made
                    words = shlex.split(seg, comments=True)
                    files.update({w: None for k, w in zip(words, words[1:]) if k in ("--out", "-o", "--graph")})
        else:
            prose.append((i, line))
    text = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    for m in re.finditer(r"`(causaldiffae [^`]+)`", text):
        argv = _argv(" ".join(m.group(1).split()))
        if argv and any(a.startswith("-") for a in argv) and not ("[-" in m.group(1) or "..." in m.group(1)):
            commands.append(DocCommand(page, numbers[text[: m.start()].count("\n")], argv))
    return sorted(commands, key=lambda c: c.line), files


ALL = [(c, files) for page in PAGES for commands, files in [extract(page)] for c in commands]


def test_the_pages_have_commands():
    pages = {c.page.name for c, _ in ALL}
    assert {"README.md", "counterfactuals.md", "getting-started.md", "evaluation.md", "training.md"} <= pages
    assert len(ALL) > 30


def _parse_or_none(parser, argv):
    try:
        return parser.parse_args(argv)
    except UsageError:
        return None


def _outputs(args) -> list[str]:
    """What a command makes, for other commands on the same page to use."""
    if args is None:
        return []
    out = [getattr(args, k, None) for k in ("out", "resume")]
    return [str(o).rstrip("/") for o in out if o]


def _shipped_runs() -> set[str]:
    from causaldiffae.checkpoint import pretrained_names

    return set(pretrained_names())


def _shipped_graphs() -> set[str]:
    from causaldiffae.graph import shipped_names

    return set(shipped_names())


def _known(value: str, made: set[str], files: dict[str, str], names: set[str]) -> bool:
    v = value.rstrip("/").split("*")[0].rstrip("/")  # a glob: its fixed part
    return (value in names or (ROOT / value).exists() or value in PLACEHOLDERS or v in PLACEHOLDERS or value in files
            or any(v == m or v.startswith(m + "/") for m in made))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_parses_and_names_what_exists(page):
    from causaldiffae.data.generate import GENERATORS

    parser = build_parser()
    commands, files = extract(page)
    # what the page's commands make (anywhere on the page: prose may name a folder made below it)
    made = {o for c in commands if not {"-h", "--help"} & set(c.argv)
            for o in _outputs(_parse_or_none(parser, c.argv))}
    for other in BUILDS_ON.get(page.name, ()):
        made.update(o for c in extract(ROOT / "docs" / other)[0] if not {"-h", "--help"} & set(c.argv)
                    for o in _outputs(parser.parse_args(c.argv)))
    problems = []
    for c in commands:
        if {"-h", "--help"} & set(c.argv):  # `causaldiffae train --help`: the help must print
            if main(c.argv) != 0:
                problems.append(f"{c}\n    --help did not exit 0")
            continue
        try:
            args = parser.parse_args(c.argv)
        except UsageError as e:
            problems.append(f"{c}\n    {e}")
            continue
        checks = {
            "graph": _shipped_graphs(), "run": _shipped_runs(), "data": set(GENERATORS), "config": set(),
            "labels": set(), "predictors": set(),
        }
        if args.command == "demo":
            checks = {}
        for key, names in checks.items():
            value = getattr(args, key, None)
            for v in value if isinstance(value, list) else [value] if value else []:
                if not _known(str(v), made, files, names):
                    problems.append(f"{c}\n    --{key} {v}: no such shipped name, file, or output of a command on the page")
        if args.command in ("counterfactual", "sample"):
            from causaldiffae.cli import _parse_do
            from causaldiffae.errors import InterventionError

            try:
                _parse_do(args.do)
            except InterventionError as e:
                problems.append(f"{c}\n    {e}")
        for image in getattr(args, "images", None) or []:
            if not _known(image, made, files, set()):
                problems.append(f"{c}\n    --images {image}: no such file")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------ run them
def _runnable(c: DocCommand, files: dict[str, str]) -> list[str] | None:
    """The command made quick (fewer images and steps) with repository paths made absolute, or None
    when it is not quick (training, evaluation, predictors, full data sets) or needs the reader's
    own files."""
    from causaldiffae.data.generate import GENERATORS

    if {"-h", "--help"} & set(c.argv):
        return None
    try:
        args = build_parser().parse_args(c.argv)
    except UsageError:
        return None  # reported by test_every_command_parses_and_names_what_exists
    if args.command == "graph":
        g = args.graph
        if not (g in _shipped_graphs() or (ROOT / g).exists() or files.get(g) is not None):
            return None
        if args.graph_command == "check" and not (ROOT / args.labels).exists():
            return None
        return c.argv
    if args.command == "demo":
        return [*c.argv, "--n", "1", "--steps", "2"]
    if args.command in ("counterfactual", "sample"):
        if args.run not in _shipped_runs():
            return None
        if args.command == "counterfactual" and not (args.data in GENERATORS):
            return None
        return [*c.argv, "--n", "2", "--steps", "2"]
    if args.command == "data":
        return [*c.argv, "--n", "12"]
    return None


QUICK = [(c, files) for c, files in ALL if _runnable(c, files) is not None]


def test_quick_commands_are_a_fair_share():
    kinds = {tuple(c.argv[:2]) if c.argv[0] == "graph" else (c.argv[0],) for c, _ in QUICK}
    assert {("graph", "render"), ("demo",), ("counterfactual",), ("sample",), ("data",)} <= kinds, kinds


@pytest.fixture(scope="module")
def small_generated(tmp_path_factory):
    """A small generated set per generator: `--data pendulum` in a page runs on 24 of its scenes."""
    from causaldiffae.data import generate_dataset

    d = tmp_path_factory.mktemp("gen")
    return {name: str(generate_dataset(name, d / name, size=32, n=24, progress=False)) for name in ("pendulum", "morphomnist")}


@pytest.mark.parametrize("cmd", [c for c, _ in QUICK], ids=str)
def test_quick_commands_run(cmd, tmp_path, monkeypatch, small_generated, capsys):
    files = dict(next(f for c, f in QUICK if c is cmd))
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():  # the files the page writes out (graphs/my_world.dot)
        if text is None:
            continue
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    argv = _runnable(cmd, files)
    argv = [str(ROOT / a) if (ROOT / a).exists() and not (tmp_path / a).exists() and "/" in a else a for a in argv]
    if "--data" in argv:
        k = argv.index("--data") + 1
        argv[k] = small_generated.get(argv[k], argv[k])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, f"{cmd}\n{err}"
    assert "Traceback" not in err
