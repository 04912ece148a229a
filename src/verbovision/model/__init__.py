"""Models: composing one from an encoder, a connector and a language model; loading and saving; what trains;
quantization; the feature cache; the loss."""
