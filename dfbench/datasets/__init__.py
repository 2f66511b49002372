"""Dataset loaders for native on-disk layouts, and the embedded mini sets."""
