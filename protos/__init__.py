"""The gRPC contract between the edge and the cloud (package relayllm.v1)."""

from relayllm.protos import relay_pb2, relay_pb2_grpc

__all__ = ["relay_pb2", "relay_pb2_grpc"]
