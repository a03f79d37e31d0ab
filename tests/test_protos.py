"""The committed stubs are exactly what protos/codegen.py makes from relay.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def test_generated_stubs_match_the_committed_ones(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the [dev] extra")
    from relayllm.protos import codegen

    written = codegen.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(codegen.GENERATED)
    for path in written:
        assert path.read_bytes() == (PROTOS / path.name).read_bytes(), f"{path.name} is stale: run protos/codegen.py"


def test_stubs_import_under_the_namespace():
    from relayllm.protos import relay_pb2, relay_pb2_grpc

    assert relay_pb2.DESCRIPTOR.package == "relayllm.v1"
    assert "Help" in relay_pb2.DESCRIPTOR.services_by_name["Relay"].methods_by_name
    assert hasattr(relay_pb2_grpc, "RelayStub")


def test_deltas_share_the_longest_common_prefix_and_never_cut_a_character():
    from relayllm.protos.delta import common_prefix, common_utf8_prefix

    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2]) == 2
    held, now = "café au".encode(), "cafè au lait".encode()  # é and è share their first byte
    assert common_prefix(held, now) == 4  # "caf" + the shared lead byte
    assert common_utf8_prefix(held, now) == 3  # back to the whole character
    assert now[:common_utf8_prefix(held, now)].decode() == "caf"
