"""Benchmarks: the server against baselines measured side by side in one run (`python -m bench`)."""
