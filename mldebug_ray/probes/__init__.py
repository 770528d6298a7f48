"""Probes: evidence computed from a run's artifacts (checkpoints) or by running its model; one probe per module."""
