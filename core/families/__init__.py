"""Metric families: each declares its accumulators, its registry and its per-layer record (core/families/protocol.py)."""
