"""The decoder: its spec, layers, decoding loops, and the trained model on disk."""
