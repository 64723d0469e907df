"""Validation during training: the objective's loss, posterior and decoded token accuracy, and the
action error of full decoding, on fixed batches with fixed random streams."""

from __future__ import annotations

import math

import numpy as np

from dfm_vla.train.config import TrainConfig
from dfm_vla.train.model_setup import autocast_context


def decode_tokens(model, prefix, cfg: TrainConfig, tokenizer, path, generator):
    """Decode action tokens (B, L) for ``prefix`` with the objective's own decoder."""
    import torch

    from dfm_vla.policy import samplers
    from dfm_vla.policy.probability_path import slot_token_ids

    mc = model.config
    batch, slots = prefix.batch_size, mc.num_action_slots
    allowed = torch.zeros(tokenizer.vocab_size, dtype=torch.bool, device=model.device)
    allowed[slot_token_ids(tokenizer)] = True
    if cfg.objective == "ar":
        return samplers.ar_sample(
            model.ar_stepper(prefix),
            batch,
            slots,
            boa_id=tokenizer.boa_id,
            allowed=allowed,
            device=model.device,
        ).tokens
    cache = "prefix" if mc.attention != "bidirectional" else "none"
    denoiser = model.make_denoiser(prefix, cache=cache)
    if cfg.objective == "dd":
        steps = mc.steps_fine + mc.steps_val
        return samplers.dd_sample(
            denoiser, tokenizer.mask_id, batch, slots, steps, allowed=allowed, device=model.device
        ).tokens
    rate_fn = denoiser.rate_fn if cfg.objective == "dfm_head" else None
    return samplers.dfm_sample(
        denoiser,
        path.to(model.device) if hasattr(path, "to") else path,
        batch,
        slots,
        steps_fine=mc.steps_fine,
        steps_val=mc.steps_val,
        generator=generator,
        rate_fn=rate_fn,
        device=model.device,
    ).tokens


def evaluate(
    model,
    dataset,
    prefix_builder,
    objective,
    cfg: TrainConfig,
    tokenizer,
    path,
    device: str,
    decode: bool = True,
) -> dict:
    """Validation metrics on fixed batches with fixed random streams (comparable across evaluations).

    val/loss: the objective's loss. val/posterior_acc: argmax of the model's one-pass prediction at the
    corrupted input (DFM: p_1|t at the sampled t; DD: the masked slots; AR: teacher-forced) against the
    demo tokens. With ``decode`` (not under FSDP, whose shards only gather inside ``forward``):
    val/token_acc, full decoding with the objective's decoder against the demo tokens, and
    val/action_mae, the mean absolute error of the decoded actions over the real steps (original units).
    ``model`` is what gets called: the unwrapped model, or the FSDP module (every rank calls it then).
    """
    import torch

    if dataset is None or len(dataset) == 0:
        return {}
    n = len(dataset)
    order = np.random.default_rng(12345).permutation(n)
    batch_size = min(cfg.batch_size, n)
    num_batches = math.ceil(n / batch_size)
    if cfg.eval_batches:
        num_batches = min(num_batches, cfg.eval_batches)
    was_training = model.training
    model.eval()
    totals = dict.fromkeys(("loss", "post_hit", "post_n", "correct", "counted", "abs_err", "abs_count"), 0.0)
    totals["batches"] = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        generator = torch.Generator(device=device).manual_seed(cfg.seed + 777)
        for b in range(num_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            batch = dataset.batch(idx)
            prefix = prefix_builder(batch).to(device)
            x1 = torch.from_numpy(batch["action_tokens"]).to(device)
            slot_mask = torch.from_numpy(batch["slot_mask"]).to(device)
            cpu_gen = torch.Generator().manual_seed(cfg.seed + 1000 + b)
            noised = objective.corrupt(x1.cpu(), cpu_gen)
            noised.x_t, noised.t = noised.x_t.to(device), noised.t.to(device)
            with autocast_context(cfg, device):
                output = model(prefix, noised.x_t, noised.t)
                loss = objective.loss(output, x1, noised, slot_mask)
            totals["loss"] += float(loss)
            logits = (output[0] if isinstance(output, tuple) else output).float()
            if getattr(objective, "allowed", None) is not None:
                logits = logits.masked_fill(~objective.allowed.to(device), float("-inf"))
            elif path is not None:
                logits = logits.masked_fill(~path.allowed.to(device), float("-inf"))
            counted = slot_mask & (noised.x_t == tokenizer.mask_id) if cfg.objective == "dd" else slot_mask
            totals["post_hit"] += float(((logits.argmax(-1) == x1) & counted).sum())
            totals["post_n"] += float(counted.sum())
            totals["batches"] += 1
            if not decode:
                continue
            tokens = decode_tokens(model, prefix, cfg, tokenizer, path, generator)
            totals["correct"] += float(((tokens == x1) & slot_mask).sum())
            totals["counted"] += float(slot_mask.sum())
            decoded = tokenizer.decode(tokens.cpu().numpy()).actions  # (B, H, A)
            step_mask = batch["action_mask"][..., None]
            totals["abs_err"] += float((np.abs(decoded - batch["actions"]) * step_mask).sum())
            totals["abs_count"] += float(step_mask.sum() * decoded.shape[-1])
    model.train(was_training)
    result = {
        "val/loss": totals["loss"] / totals["batches"],
        "val/posterior_acc": totals["post_hit"] / max(1.0, totals["post_n"]),
    }
    if decode:
        result["val/token_acc"] = totals["correct"] / max(1.0, totals["counted"])
        result["val/action_mae"] = totals["abs_err"] / max(1.0, totals["abs_count"])
    return result
