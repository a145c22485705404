"""File formats: one module or package per format, each a plugin registered through an entry point."""
