"""PyTorch checkpoints: ``format`` is the plugin, ``scan`` checks a pickle before torch touches it."""
