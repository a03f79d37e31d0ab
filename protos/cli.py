"""The `relayllm` command: a thin dispatcher over the subcommands each part registers.

Each part declares its subcommands as entry points in the group `relayllm.commands`
(pyproject.toml). An entry point names a module with `HELP` (one line), `add_arguments(parser)`
and `run(args) -> int`; the module imports nothing heavy at import time. Only the chosen
subcommand's module is imported (all of them for `relayllm --help`), so `relayllm generate`
never imports torch, and this file imports no part of relayllm.

Errors for a person (protos.errors.ReadableError and its subclasses) print as one line and
exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from relayllm.protos.errors import ReadableError

GROUP = "relayllm.commands"


def _commands() -> dict:
    return {ep.name: ep for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name)}


def _add(sub, name: str, ep) -> object | None:
    try:
        module = ep.load()
    except ImportError as exc:  # a role that is not installed
        missing = getattr(exc, "name", None) or str(exc)
        p = sub.add_parser(name, help=f"[unavailable: {missing}]")
        p.set_defaults(_unavailable=f"`relayllm {name}` needs a part that is not installed ({missing}); "
                                    f"install the matching extra, e.g. pip install 'relayllm[dev]'")
        return None
    p = sub.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(p)
    return module


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict]:
    """The parser for `argv`, with the chosen subcommand's module loaded (all of them when
    none is chosen, for --help or a mistyped name); returns it and the loaded modules."""
    commands = _commands()
    parser = argparse.ArgumentParser(prog="relayllm", description="Edge-cloud split decoding.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    names = [chosen] if chosen in commands else list(commands)
    return parser, {name: _add(sub, name, commands[name]) for name in names}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(f"relayllm: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except ReadableError as exc:
        print(f"relayllm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relayllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
