"""Model families: one plugin module per family (llama, gpt2, …), each registering its architectures.

``_gguf`` is not a plugin: it is the families' shared view of gguf-py (llama.cpp's tensor names and
metadata keys), a library they import the way a format plugin imports its format's library.
"""
