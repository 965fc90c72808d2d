#!/usr/bin/env bash
# Regenerate the committed protobuf/gRPC modules from inference.proto.
# Run from anywhere: paths are relative to the source root (platform/) so the generated
# imports read `from fleetserve.api.grpc import inference_pb2`.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "$root"
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. fleetserve/api/grpc/inference.proto
echo "regenerated fleetserve/api/grpc/inference_pb2{,_grpc}.py"
