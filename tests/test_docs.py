"""docs/*.md's commands parse as written, and the sources' pointers into the docs lead somewhere.

Every `relayllm ...` command in a code block of docs/ (fenced, or indented by four spaces;
`accelerate launch -m relayllm.protos.cli ...` too) is parsed by the real dispatcher, with the
shell variables the page sets (`SLM=...`, `for mode in ...`) expanded: an unknown flag, an
ambiguous abbreviation (`--token` where only `--tokens-file` exists) or a bad choice fails here.
A docstring that sends the reader to a section (`docs/x.md, "Heading"`) names a heading that
exists. tests/test_readme.py does the same for the README's commands.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from relayllm.protos.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PREFIXES = ("relayllm ", "accelerate launch -m relayllm.protos.cli ", "python -m relayllm.protos.cli ")


def code_lines(text: str) -> list[str]:
    """The lines of code blocks (fenced or four-space indented), continuations joined."""
    out, fenced, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or raw.startswith("    ")):
            pending = ""
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        out.append(line)
    return out


def doc_commands(text: str) -> list[str]:
    """The relayllm commands of a page, as argv lines after `relayllm`, shell variables expanded."""
    commands, env, loop = [], {}, None
    for line in code_lines(text):
        line = re.split(r"\s+#", line)[0].strip()
        if m := re.fullmatch(r"for (\w+) in ([^;]+); do", line):
            loop = (m.group(1), m.group(2).split())
            continue
        if line == "done":
            loop = None
            continue
        if m := re.fullmatch(r"(\w+)=(\S+)", line):
            env[m.group(1)] = m.group(2)
            continue
        line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # leading VAR=value settings
        prefix = next((p for p in PREFIXES if line.startswith(p)), None)
        if prefix is None:
            continue
        rest = line[len(prefix):]
        for value in (loop[1] if loop and f"${loop[0]}" in rest else [None]):
            scope = {**env, **({loop[0]: value} if value is not None else {})}
            commands.append(re.sub(r"\$\{?(\w+)\}?", lambda m: scope.get(m.group(1), m.group(0)), rest))
    return commands


COMMANDS = [(doc.name, c) for doc in DOCS for c in doc_commands(doc.read_text())]


def parse(line: str):
    argv = shlex.split(line)
    parser, modules = build_parser(argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit:
        raise AssertionError(f"`relayllm {line}` does not parse: {err.getvalue().strip()}") from None
    assert modules[argv[0]] is not None, f"`relayllm {argv[0]}` is unavailable"
    return args


def test_the_docs_have_commands_to_check():
    names = {name for name, _ in COMMANDS}
    assert "byo-pair.md" in names and len(COMMANDS) >= 8, COMMANDS
    # the loop in byo-pair.md's evaluation section: one command per mode, variables expanded
    evals = [c for name, c in COMMANDS if name == "byo-pair.md" and c.startswith("eval ")]
    assert any("--mode relay " in c for c in evals) and not any("$" in c for c in evals), evals


@pytest.mark.parametrize("name,line", COMMANDS, ids=[f"{n}:{c[:60]}" for n, c in COMMANDS])
def test_every_docs_command_parses(name, line):
    args = parse(line)
    assert args.command == shlex.split(line)[0]


def test_serving_with_tokens_is_documented_as_it_parses():
    """byo-pair.md once served with `--token SECRET:team`: argparse took it for an abbreviation
    of --tokenizer/--tokens-file and refused it ("ambiguous option"). Tokens come from a file."""
    serves = [c for name, c in COMMANDS if name == "byo-pair.md" and c.startswith("serve ")]
    assert serves
    with_tokens = [c for c in serves if "--tls-cert" in c]
    assert with_tokens and all("--tokens-file" in c for c in with_tokens), with_tokens
    args = parse(with_tokens[0])
    assert args.tokens_file and args.tls_cert and args.tls_key
    with pytest.raises(AssertionError, match="ambiguous option"):
        parse("serve --model m.gguf --token SECRET:team")


# --------------------------------------------------------------------------------------------
# Pointers from the sources into the docs

SOURCES = [p for part in ("edge", "cloud", "protos", "training") for p in sorted((ROOT / part).rglob("*.py"))]
POINTER = re.compile(r"""((?:README|docs/[\w-]+)\.md),?\s+(?:section\s+)?["']([^"']+)["']""")
LOOSE = re.compile(r"README's\s+[\w -]+\s+section")


def headings(path: Path) -> list[str]:
    return [h.strip() for h in re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)]


def test_pointers_into_the_docs_name_sections_that_exist():
    pointers = []
    for src in SOURCES:
        text = src.read_text()
        loose = LOOSE.findall(text)
        assert not loose, f"{src.relative_to(ROOT)} points to a README section by description: {loose}; " \
                          "name the file and the heading ('docs/x.md, \"Heading\"')"
        for file, heading in POINTER.findall(text):
            target = ROOT / file
            assert target.is_file(), f"{src.relative_to(ROOT)} points to a missing {file}"
            assert any(h.startswith(heading) for h in headings(target)), \
                f"{src.relative_to(ROOT)}: {file} has no section {heading!r} (its headings: {headings(target)})"
            pointers.append((src.name, file, heading))
    assert ("default_relay.py", "docs/relay-protocol.md", "What was measured while choosing") in pointers


# --------------------------------------------------------------------------------------------
# A CPU-only torch: what the README tells a user, what .ci/setup does, and the pinned version


def test_a_cpu_only_torch_is_documented_and_set_up_at_the_pinned_version():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {d.split("==")[1] for d in extras["cloud"] if d.startswith("torch==")}
    assert len(pins) == 1, extras["cloud"]
    version = pins.pop()
    cpu_index = "https://download.pytorch.org/whl/cpu"
    readme = (ROOT / "README.md").read_text()
    install = readme.split("## Install by role", 1)[1].split("\n## ", 1)[0]
    assert f"pip install torch=={version} --index-url {cpu_index}" in install
    setup = (ROOT / ".ci" / "setup").read_text()
    # the CPU build from the configured indexes where one has it (a local wheel folder), else PyTorch's index
    assert f'install "torch=={version}+cpu"' in setup
    assert cpu_index in setup and f"install torch=={version} --index-url" in setup
    assert "lies on disk" not in setup


def test_the_readme_names_the_baselines_and_simplifications_for_what_they_are():
    readme = (ROOT / "README.md").read_text()
    # the "query" mode picks whole questions at random: no router, and no forced "(chosen)"
    assert "query router" not in readme.lower()
    rows = [line for line in readme.splitlines() if line.startswith("| random query split")]
    assert rows and all("(chosen)" not in r for r in rows), rows
    # R2R and CITER as built here, beside their papers (training/routers/r2r.py, citer.py say the same)
    for phrase in ("no verifier model", "symmetrically", "assumes the LLM's branch", "one iteration",
                   "held-out questions"):
        assert phrase in readme, phrase
    assert "no verifier model" in (ROOT / "training/routers/r2r.py").read_text()
    assert "*assumed*" in (ROOT / "training/routers/citer.py").read_text()
