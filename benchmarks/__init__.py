"""Speed / memory benchmark of icm_core against a faithful official-style baseline (``python -m benchmarks.run``)."""
