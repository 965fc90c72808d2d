"""Registers :class:`InferenceServicer` on a gRPC server (``grpc.aio`` or Ray Serve's gRPC proxy).

Like protoc's ``add_InferenceServicer_to_server``, except that a request that does not parse
as its message never fails inside grpc (which answers UNKNOWN, a server-fault status, to any
deserializer exception): it arrives at the servicer as a :class:`MalformedMessage`, which
the servicer refuses after authentication with INVALID_ARGUMENT. Ray's proxy keeps this
deserializer and pickles its result to the ingress, so the marker is a plain, importable class.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from fleetserve.api.grpc import inference_pb2 as pb

SERVICE = "fleetserve.v1.Inference"


@dataclass
class MalformedMessage:
    """Bytes that did not parse as a ``message`` request (protobuf says why in ``error``)."""

    message: str
    error: str


def _tolerant(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:  # protobuf's parse failures
            return MalformedMessage(cls.DESCRIPTOR.name, str(exc))
    return parse


def add_servicer(servicer, server) -> None:
    """``servicer``'s three methods on ``server``, with deserializers that never raise."""
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate, request_deserializer=_tolerant(pb.GenerateRequest),
            response_serializer=pb.GenerateResponse.SerializeToString),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream, request_deserializer=_tolerant(pb.GenerateRequest),
            response_serializer=pb.GenerateChunk.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=_tolerant(pb.ListModelsRequest),
            response_serializer=pb.ListModelsResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
