"""One test module per model family (tests/families/support.py holds what they share)."""
