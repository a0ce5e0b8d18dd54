"""The floor everything stands on: errors, options, labels, the metric registry, the result document,
outputs, seeded samples, progress stages, pooled statistics and thread budgets. Imports nothing else in core."""
