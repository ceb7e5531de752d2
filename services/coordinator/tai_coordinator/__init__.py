"""TAI Coordinator: signals in, actions out."""
