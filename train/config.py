"""Training configuration: one dataclass, YAML files, ``key=value`` overrides, saved beside checkpoints.

Precedence, lowest first: the dataclass defaults (the paper's recipe for large models), the
defaults of the model's scale (``SCALE_DEFAULTS``: tiny models train with a larger learning rate,
no accumulation, fp32, ...), the YAML file, then command-line overrides. A run writes the resolved
config to ``<out_dir>/train_config.yaml``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OBJECTIVES = ("dfm", "dfm_head", "dd", "ar")
TOKENIZERS = ("bins", "fast")
STRATEGIES = ("auto", "none", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")
PATH_DISTANCES = ("embedding", "value")
PATH_NORMALIZE = ("max", "mean", "nearest", "none")


@dataclass
class TrainConfig:
    """Everything a training run needs. Units: lr per optimizer step, times in minutes."""

    # --- data ---
    data: list[str] = field(default_factory=list)  # demo files/folders (HDF5 or LeRobot roots)
    data_format: str = "auto"  # auto | hdf5 | lerobot
    state_keys: list[str] = field(default_factory=lambda: ["state"])  # concatenated into obs["state"]
    image_keys: list[str] = field(default_factory=list)  # e.g. ["agentview_rgb"]
    horizon: int = 8  # H, actions per chunk
    val_fraction: float = 0.1  # share of episodes (per task) held out
    data_fraction: float = 1.0  # share of training episodes kept (low-data ablation)
    mask_padded_steps: bool = True  # drop the loss on chunk steps past an episode's end
    # --- action tokenizer ---
    tokenizer: str = "fast"  # fast | bins
    num_bins: int = 256  # bins tokenizer
    fast_scale: float = 10.0  # FAST DCT scale
    fast_vocab_size: int = 1024  # FAST BPE vocabulary
    gripper_dims: list[int] = field(default_factory=lambda: [6])
    tokenizer_fit_max_chunks: int = 50_000
    # --- model and objective ---
    model: str = "univla-8b"  # named config (tiny | base | univla-8b) or a checkpoint folder
    model_overrides: dict[str, Any] = field(default_factory=dict)  # fields of the model config
    init_from: str = ""  # local UniVLA/Emu3 checkpoint (Hugging Face layout) for the 8B path
    # a dfm-vla policy folder (cli.py train's output) whose weights start this run: continued training
    # or fine-tuning on new demos with the same model config; optimizer and schedule start fresh
    warm_start: str = ""
    objective: str = "dfm"  # dfm | dfm_head | dd | ar
    t_max: float = 0.999  # training times t ~ U(0, t_max), kept away from t = 1 (where x_t = x1)
    # DFM metric path: distances between action tokens, measured on the model's action embeddings
    # ("embedding", the paper's DFM+Embed, refreshed every path_refresh_every steps) or on the
    # tokenizer's value-space meaning ("value": bin centres, FAST coefficients).
    path_distance: str = "embedding"
    path_metric: str = "l2"  # l2 | cosine
    path_normalize: str = "max"  # max | mean | nearest | none
    path_c: float = 3.0
    path_alpha: float = 1.0
    path_refresh_every: int = 1
    # --- optimisation (the paper's recipe) ---
    lr: float = 8e-5
    min_lr_ratio: float = 0.0  # cosine floor, as a share of lr
    # "steps": the cosine runs over max_steps (exactly resumable). "budget": with max_minutes set, it runs
    # over whichever of max_steps and the wall-clock budget ends first (the lr then depends on time).
    lr_schedule_clock: str = "steps"
    warmup_steps: int = 50
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-6
    weight_decay: float = 0.1
    grad_clip: float = 5.0
    batch_size: int = 8  # per device, per micro-step
    grad_accum: int = 4
    effective_batch_size: int = 0  # if > 0: grad_accum = this / (batch_size x world size)
    max_steps: int = 20_000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock budget of one invocation (0: none); saves and stops when spent
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    activation_checkpointing: bool = True
    strategy: str = "auto"  # auto (FSDP for univla-8b, DDP otherwise when distributed) | none | ddp | fsdp
    # --- bookkeeping ---
    seed: int = 0
    torch_threads: int = 0  # 0: leave torch's default
    out_dir: str = "runs/train"
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 8  # validation batches per evaluation (0: the whole split)
    eval_at_start: bool = False  # also evaluate the untrained model (step 0)
    save_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range."""
        checks = [
            ("objective", self.objective in OBJECTIVES, f"one of {OBJECTIVES}"),
            ("tokenizer", self.tokenizer in TOKENIZERS, f"one of {TOKENIZERS}"),
            ("strategy", self.strategy in STRATEGIES, f"one of {STRATEGIES}"),
            ("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}"),
            ("horizon", self.horizon >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("grad_accum", self.grad_accum >= 1, "a positive integer"),
            ("max_steps", self.max_steps >= 1, "a positive integer"),
            ("lr", self.lr > 0, "a positive number"),
            ("warmup_steps", self.warmup_steps >= 0, "a non-negative integer"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("val_fraction", 0 <= self.val_fraction < 1, "a number in [0, 1)"),
            ("data_fraction", 0 < self.data_fraction <= 1, "a number in (0, 1]"),
            ("t_max", 0 < self.t_max < 1, "a number in (0, 1)"),
            ("path_distance", self.path_distance in PATH_DISTANCES, f"one of {PATH_DISTANCES}"),
            ("path_metric", self.path_metric in ("l2", "cosine"), "'l2' or 'cosine'"),
            ("path_normalize", self.path_normalize in PATH_NORMALIZE, f"one of {PATH_NORMALIZE}"),
            ("path_refresh_every", self.path_refresh_every >= 1, "a positive integer"),
            ("device", self.device in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
            ("lr_schedule_clock", self.lr_schedule_clock in ("steps", "budget"), "'steps' or 'budget'"),
            ("save_every", self.save_every >= 1, "a positive integer"),
            ("eval_every", self.eval_every >= 1, "a positive integer"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (atomically)."""
        import yaml

        from dfm_vla.utils.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# Defaults by model scale, applied over the dataclass defaults and under the YAML file.
SCALE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Tuned on LIBERO-Goal state demos on a 2-core CPU: many cheap optimizer steps (probe lesson:
    # step count is what limits a tiny model), a large learning rate, no accumulation, fp32.
    "tiny": {
        "lr": 3e-3,
        "min_lr_ratio": 0.05,
        "warmup_steps": 100,
        "weight_decay": 0.01,
        "betas": [0.9, 0.99],
        "eps": 1e-8,
        "grad_clip": 1.0,
        "batch_size": 64,
        "grad_accum": 1,
        "precision": "fp32",
        "activation_checkpointing": False,
        "tokenizer": "bins",
        "num_bins": 64,
        "eval_every": 250,
        "save_every": 250,
    },
    "base": {"lr": 3e-4, "warmup_steps": 200, "batch_size": 32, "grad_accum": 1},
    # univla-8b: the paper's recipe as in the dataclass (8 GPUs x 8 per GPU x 4 accumulation = 256).
    "univla-8b": {"effective_batch_size": 256},
}


def _scale_of(model: str) -> str | None:
    if model in SCALE_DEFAULTS:
        return model
    return None


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's annotated type."""
    import yaml

    if isinstance(value, str) and annotation is not str:
        value = yaml.safe_load(value) if value != "" else value
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if annotation is str:
            return str(value)
        if origin is list:
            (item_type,) = typing.get_args(annotation)
            if isinstance(value, str | int | float):
                value = [value]
            return [_coerce(name, v, item_type) for v in value]
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ValueError(f"TrainConfig.{name}: expected {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge ``overrides`` into ``values``, checking names and converting types; returns ``values``."""
    types_by_name = _field_types()
    for key, value in overrides.items():
        if key not in types_by_name:
            close = [n for n in types_by_name if n.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"{source}: unknown TrainConfig field {key!r}{hint}")
        values[key] = _coerce(key, value, types_by_name[key])
    return values


def add_overrides_argument(parser) -> None:
    """``--set KEY=VALUE`` (repeatable) on an argparse parser; read it with :func:`parse_overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field",
    )


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=3e-4", "betas=[0.9, 0.95]"]`` -> {"lr": "3e-4", ...} (values converted later)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE (e.g. lr=3e-4)")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from an optional YAML file and overrides (module docstring)."""
    import yaml

    file_values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config {path}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            kind = type(loaded).__name__
            raise ValueError(f"config {path}: expected a mapping of TrainConfig fields, got {kind}")
        file_values = loaded
    overrides = dict(overrides or {})
    model = str(overrides.get("model", file_values.get("model", TrainConfig.model)))
    values: dict[str, Any] = {}
    scale = _scale_of(model)
    if scale is not None:
        apply_overrides(values, SCALE_DEFAULTS[scale], f"SCALE_DEFAULTS[{scale!r}]")
    apply_overrides(values, file_values, f"config {path}")
    apply_overrides(values, overrides, "command line")
    config = TrainConfig(**values)
    config.validate()
    return config


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.save` (no scale defaults re-applied)."""
    config = TrainConfig(**apply_overrides({}, values, "saved config"))
    config.validate()
    return config


__all__ = [
    "OBJECTIVES",
    "SCALE_DEFAULTS",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_overrides",
]
