"""Ports, adapters and the gRPC runtime shared by every TAI service."""
