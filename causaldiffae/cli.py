"""The ``causaldiffae`` command line.

Every sub-command is a thin layer over the Python API. Errors a user can cause (a bad graph file, an
unknown node, a corrupt checkpoint...) are :class:`~causaldiffae.errors.CausalDiffAEError`s: the
CLI prints their message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from causaldiffae.errors import CausalDiffAEError

EXIT_USER_ERROR = 2
EXIT_FALSIFIED = 1

_COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str):
    """Register ``fn(subparsers)`` as the builder of sub-command ``name``."""

    def wrap(fn):
        _COMMANDS[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------------------------------- graph
@command("graph")
def _graph_parser(sub) -> None:
    p = sub.add_parser("graph", help="render or check a causal graph file")
    gsub = p.add_subparsers(dest="graph_command", required=True)

    r = gsub.add_parser("render", help="draw a graph with graphviz (png, svg or pdf)")
    r.add_argument("graph", help="graph file (.dot/.gv/.gml/.yaml/.json) or a shipped name (pendulum, ...)")
    r.add_argument("-o", "--out", required=True, help="output file; the suffix picks the format")
    r.add_argument("--do", action="append", default=[], metavar="NODE", help="highlight NODE as intervened and its descendants as affected (repeatable)")
    r.set_defaults(func=_graph_render)

    c = gsub.add_parser("check", help="test the graph's conditional independences on a label table with DoWhy")
    c.add_argument("graph")
    c.add_argument("--labels", required=True, help="CSV with one column per node (the node's label column)")
    c.add_argument("--permutations", type=int, default=20, help="DoWhy permutations (more: slower, surer)")
    c.add_argument("--max-rows", type=int, default=2000, help="subsample the table to this many rows")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_graph_check)


def _graph_render(args) -> int:
    from causaldiffae.graph import CausalGraph, render

    graph = CausalGraph.load(args.graph)
    out = render(graph, args.out, intervened=args.do)
    print(f"wrote {out}")
    return 0


def _graph_check(args) -> int:
    from causaldiffae.graph import CausalGraph, check, load_label_table

    graph = CausalGraph.load(args.graph)
    table = load_label_table(args.labels)
    report = check(graph, table, n_permutations=args.permutations, max_rows=args.max_rows, seed=args.seed)
    print(report.summary())
    return EXIT_FALSIFIED if report.falsified else 0


# ----------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causaldiffae",
        description="Counterfactual image generation with causal diffusion autoencoders.",
    )
    from causaldiffae import __version__

    parser.add_argument("--version", action="version", version=f"causaldiffae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for build in _COMMANDS.values():
        build(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``causaldiffae`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CausalDiffAEError as e:
        print(f"causaldiffae: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("causaldiffae: interrupted", file=sys.stderr)
        return 130


def _path(s: str) -> Path:
    return Path(s).expanduser()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
