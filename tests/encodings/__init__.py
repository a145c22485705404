"""Helpers of tests/test_encodings.py: already-quantised checkpoints and their reference dequantisations."""
