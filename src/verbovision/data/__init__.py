"""Records from every format, their images, encoding for a model (templates, image tokens, labels), batching, packing,
streams, synthetic data and the data tools (check, clean, convert, split)."""
