"""Generated gRPC stubs for protos/lnpt/v1/guidance.proto (do not edit; run `make protos`)."""
