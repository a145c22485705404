"""Quantiser plugins: gguf-py's numpy quantisers and lmconv's byte-exact K-quants."""
