"""Model sizes that tests build in seconds on a CPU (the `tiny` preset, made smaller)."""

from dfm_vla.policy.config import ModelConfig, get_config

SMALL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128}
MICRO = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def small_model_config(**overrides) -> ModelConfig:
    """2 layers, width 64: big enough to learn a toy task in a few dozen steps."""
    return get_config("tiny", **{**SMALL, **overrides})


def micro_model_config(**overrides) -> ModelConfig:
    """1 layer, width 32: for plumbing tests where the weights stay random."""
    return get_config("tiny", **{**MICRO, **overrides})
