"""TAI Governor: the policy lifecycle."""
