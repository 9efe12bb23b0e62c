"""Deterministic workflow code: the order saga, its state machine and models."""
