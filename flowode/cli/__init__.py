"""The ``flowode`` command line.

Each subcommand is one module in this package with two functions::

    add_parser(subparsers) -> argparse.ArgumentParser   # registers the subcommand and its flags
    run(args) -> int                                     # does the work, returns the exit status

and one line in :data:`COMMANDS`. ``flowode <command> --help`` documents every flag.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

#: subcommand modules, in the order ``flowode --help`` lists them
COMMANDS = ["demo", "bench", "plot", "trajectories", "sample", "invert", "likelihood", "train", "learn", "solvers",
            "study"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowode",
        description="Diffusion models as probability-flow ODEs: sample, compare solvers, encode/decode.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"flowode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError) as exc:  # user errors: one clear line, no traceback
        print(f"flowode {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written (full disk, permissions)
        print(f"flowode {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: still one line, the traceback on request
        if os.environ.get("FLOWODE_TRACEBACK"):
            raise
        print(f"flowode {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (run again with "
              "FLOWODE_TRACEBACK=1 for the traceback, and please report it)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
