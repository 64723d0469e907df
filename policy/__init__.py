"""The model: configs, backbone, tokenizers, probability path, velocity, samplers, KV cache."""
