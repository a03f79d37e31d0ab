"""The `relayllm` command: one entry point, one subcommand per job.

Each subcommand lives in the module of the part that owns it. That module exposes
`add_arguments(parser)` and `run(args) -> int`, and imports nothing heavy at import time,
so `relayllm generate` never imports torch and `relayllm --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("relayllm.edge.generate_cli", "answer a prompt with the on-device SLM, asking the cloud when it calls"),
    "serve": ("relayllm.cloud.cli", "run the cloud LLM service (gRPC)"),
    "train": ("relayllm.training.cli", "warm-up, GRPO and GGUF export of a relay SLM"),
    "eval": ("relayllm.training.evaluate_cli", "evaluate slm / llm / relay / routers on a JSONL benchmark"),
    "demo": ("relayllm.training.demo", "build the default models, start a cloud on loopback, print the relay table"),
    "bench": ("relayllm.training.bench", "benchmarks against the raw engines (tables + JSON)"),
}


class CliError(Exception):
    """An error for a person: printed as one readable line, exit status 2."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="relayllm", description="Edge-cloud split decoding.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a role that is not installed
            missing = getattr(exc, "name", None) or str(exc)
            p = sub.add_parser(name, help=f"{help_text} [unavailable: {missing}]")
            p.set_defaults(_unavailable=f"`relayllm {name}` needs a part that is not installed ({missing}); "
                                        f"install the matching extra, e.g. pip install 'relayllm[dev]'")
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_unavailable", None):
        print(f"relayllm: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except CliError as exc:
        print(f"relayllm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relayllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m relayllm.edge.cli`: go through the imported module, so that the CliError
    # raised by subcommands is the class caught in main() (not a copy made for __main__).
    from relayllm.edge.cli import main as _main

    sys.exit(_main())
