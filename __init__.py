"""dfm-vla: robot policies that decode action tokens by discrete flow matching.

The repository root is this package. Its parts:

- ``dfm_vla.policy``: the model, tokenizers, probability path, velocity, samplers, cache.
- ``dfm_vla.agents``: ``DFMPolicy`` (``act``/``reset``/``act_batch``) and the AR/DD baselines.
- ``dfm_vla.envs``: gymnasium environments (LIBERO, CALVIN, AgileX) and scripted experts.
- ``dfm_vla.train``: demo readers, the fine-tuning loop, checkpoints.
- ``dfm_vla.cli``: the command line (``python cli.py ...`` or ``dfm-vla ...``).
"""

__version__ = "0.1.0"
