"""Images -> prefix tokens.

- :class:`PatchImageEncoder` (small scale): uint8 images (B, V, H, W, 3), resized to ``image_size``, cut
  into ``patch_size`` patches by a strided convolution, plus learned patch-position and view embeddings:
  (B, V * n_patches, hidden). Trained with the policy.
- :class:`VQImageTokenizer` (full scale, as UniVLA): a frozen ``Emu3VQVAE`` turns each view into a grid of
  codebook indices; code c becomes vocabulary id ``vq_token_offset + c`` and every row ends with Emu3's
  end-of-line id, so a 200 x 200 view is 25 x 26 = 650 ids. The ids are embedded by the backbone's shared
  token table. It runs in the processor, outside the trainable model.
"""

from __future__ import annotations

import torch
from torch import nn

from dfm_vla.policy.config import ModelConfig


def images_to_float(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size) in [-1, 1], bilinear resize (antialiased) if needed."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


class PatchImageEncoder(nn.Module):
    """(B, V, H, W, 3) uint8 -> (B, V * (image_size // patch_size)^2, hidden)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.num_views = len(config.image_views)
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(self.num_patches, config.hidden_size))
        self.view_embed = nn.Parameter(torch.zeros(self.num_views, config.hidden_size))
        nn.init.normal_(self.pos_embed, std=config.init_std)
        nn.init.normal_(self.view_embed, std=config.init_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 5 or images.shape[1] != self.num_views:
            raise ValueError(f"images: expected (B, {self.num_views}, H, W, 3), got {tuple(images.shape)}")
        batch = images.shape[0]
        x = images_to_float(images.flatten(0, 1), self.image_size).to(self.proj.weight.dtype)
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B*V, n, hidden)
        x = x.view(batch, self.num_views, self.num_patches, -1) + self.pos_embed + self.view_embed[:, None]
        return x.flatten(1, 2)


class VQImageTokenizer:
    """A frozen Emu3VQVAE: (B, V, H, W, 3) uint8 -> (B, V, rows * (cols + 1)) int64 vocabulary ids."""

    def __init__(self, vqvae: nn.Module, config: ModelConfig):
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.config = config

    @classmethod
    def from_pretrained(cls, directory: str, config: ModelConfig) -> VQImageTokenizer:
        """Load an ``Emu3VQVAE`` in Hugging Face layout (e.g. Emu3-VisionTokenizer) from a local folder."""
        from transformers.models.emu3.modeling_emu3 import Emu3VQVAE

        return cls(Emu3VQVAE.from_pretrained(directory, local_files_only=True), config)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        batch, views = images.shape[:2]
        pixels = images_to_float(images.flatten(0, 1), cfg.image_size)
        param = next(self.vqvae.parameters())
        pixels = pixels.to(device=param.device, dtype=param.dtype)
        sizes = torch.tensor([[cfg.image_size, cfg.image_size]] * pixels.shape[0])
        codes = torch.stack(list(self.vqvae.encode(pixels, sizes).image_tokens))  # (N, rows, cols)
        ids = codes.long() + cfg.vq_token_offset
        eol = torch.full((*ids.shape[:2], 1), cfg.vq_eol_token_id, dtype=torch.long, device=ids.device)
        ids = torch.cat([ids, eol], dim=-1)
        return ids.view(batch, views, -1).cpu()
