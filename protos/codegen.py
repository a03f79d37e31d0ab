"""Regenerate the Python stubs from relay.proto with grpcio-tools.

The stubs are committed so that the edge installs without grpcio-tools; a test runs this
into a temporary folder and compares. The proto is compiled under the path
relayllm/protos/ so that the generated code imports `relayllm.protos.relay_pb2`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GENERATED = ("relay_pb2.py", "relay_pb2.pyi", "relay_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile relay.proto and write the stubs into out_dir; returns their paths."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "relayllm" / "protos"
        src.mkdir(parents=True)
        shutil.copy(HERE / "relay.proto", src / "relay.proto")
        args = [
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            "relayllm/protos/relay.proto",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on relay.proto")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            shutil.copy(src / name, out_dir / name)
            written.append(out_dir / name)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(target):
        print(path)
