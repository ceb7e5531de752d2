"""Who is calling and what they may do: principals, roles, the method-to-role table, and JWT
verification. The gRPC interceptor that enforces it is `tai_common.grpc.auth`."""
