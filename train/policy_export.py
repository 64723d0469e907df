"""Writing a run's loadable policy (weights, model config, tokenizers, normalisation) into its folder."""

from __future__ import annotations

from pathlib import Path

from dfm_vla.train.config import TrainConfig
from dfm_vla.train.model_setup import metric_path_settings


def save_policy(out_dir: Path, model, tokenizer, text_tokenizer, norm_stats: dict, cfg: TrainConfig) -> None:
    """Write the loadable policy (weights, model config, tokenizers, normalisation) into ``out_dir``.

    ``save_pretrained`` replaces a whole folder, so the policy is written to a temporary folder first and
    its entries are moved into ``out_dir`` one by one (each an atomic rename; ``config.json`` last),
    leaving the run's other files (checkpoints, curves, logs) in place.
    """
    import shutil

    from dfm_vla.policy.checkpoint import CONFIG_FILE, replace_path, save_pretrained

    extra = {
        "metric_path": metric_path_settings(cfg),
        "trained_with": {"objective": cfg.objective, "config": "train_config.yaml"},
    }
    staging = out_dir / ".policy_staging"
    if staging.exists():
        shutil.rmtree(staging)
    save_pretrained(
        staging,
        model,
        action_tokenizer=tokenizer,
        text_tokenizer=text_tokenizer,
        norm_stats=norm_stats,
        extra=extra,
    )
    entries = sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_FILE)  # config.json last
    for entry in entries:
        replace_path(entry, out_dir / entry.name)
    shutil.rmtree(staging, ignore_errors=True)
