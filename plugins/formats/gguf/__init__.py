"""GGUF: the format llama.cpp runs."""
