"""gRPC API: inference.proto, its generated modules (see regenerate.sh) and the servicer."""
