"""DFMPolicy: ``action = agent.act(obs)`` over a policy checkpoint, decoding action chunks by DFM, DD or AR.

::

    agent = DFMPolicy.from_pretrained("checkpoints/tiny-libero-goal", decoder="dfm", seed=0)
    agent.reset()
    while not done:
        action = agent.act(obs)          # (action_dim,) float32, in the env's units
        obs, reward, done, info = env.step(action)

``act`` serves the current action chunk and re-plans (one prefix encoding + the decoder's refinement calls)
when ``execute_horizon`` actions of it were used. ``act_batch(list_of_obs)`` does the same for B envs at
once, planning every env that needs it in one batched pass. Randomness is per env: env i draws from a
generator seeded with ``seed + i``, so ``DFMPolicy(seed=s).act_batch(obs_list)[i]`` equals
``DFMPolicy(seed=s + i).act(obs_list[i])`` step for step, and a rollout repeats exactly.

What the last plan did is in :attr:`DFMPolicy.last_plan` (:class:`PlanInfo`): tokens changed at each
refinement step, decode validity, milliseconds in the prefix and in refinement, model calls.

Real-time execution (``inference_delay=d > 0``): a robot keeps moving while the policy plans, so the next
chunk is requested when ``d`` actions of the current one are left, on the observation of that moment; the
``d`` queued actions still run (they are what the robot does while it waits), then the new chunk is served
from its step ``d`` on, ``execute_horizon`` actions per chunk. With ``freeze_prefix`` the new chunk's first
``d`` steps are fixed to those queued actions while the decoder refines the rest (DFM: the slots never
jump; DD: they start unmasked; AR: they are forced as the first tokens), so the plan is conditioned on
what the robot will really do. In process the plan is computed at once; ``evaluation/episode.py`` simulates
the waiting robot (``--latency-steps``). ``plan(obs, frozen_actions=...)`` is the same for a remote client.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DECODERS = ("dfm", "dd", "ar")
_OBJECTIVE_DECODERS = {"dfm": ("dfm",), "dfm_head": ("dfm",), "dd": ("dd",), "ar": ("ar",)}


@dataclass
class PlanInfo:
    """What one planning call did (one entry per planned env, in ``env_indices`` order).

    changed_per_step: (B, T) tokens changed by each model call of the decoder (the refinement at work).
    valid: (B,) bool, the chunk's tokens decoded cleanly. tokens: (B, L) the decoded token ids.
    prefix_ms / refine_ms / decode_ms: wall time in the prefix encoding, the decoder's calls, and
    detokenisation. model_calls: decoder calls (16 for DFM 14 + 2); prefix_calls: prefix encodings.
    """

    decoder: str
    env_indices: list[int]
    changed_per_step: np.ndarray
    valid: np.ndarray
    tokens: np.ndarray
    prefix_ms: float
    refine_ms: float
    decode_ms: float
    model_calls: int
    prefix_calls: int
    frozen_steps: int = 0  # leading chunk steps fixed to the actions running while this plan was made

    @property
    def total_ms(self) -> float:
        return self.prefix_ms + self.refine_ms + self.decode_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoder": self.decoder,
            "env_indices": list(self.env_indices),
            "changed_per_step": self.changed_per_step.tolist(),
            "valid": self.valid.tolist(),
            "prefix_ms": self.prefix_ms,
            "refine_ms": self.refine_ms,
            "decode_ms": self.decode_ms,
            "model_calls": self.model_calls,
            "prefix_calls": self.prefix_calls,
            "frozen_steps": self.frozen_steps,
        }


class DFMPolicy:
    """An agent over a loaded :class:`~dfm_vla.policy.checkpoint.PolicyBundle`; see the module docstring.

    decoder: "dfm" | "dd" | "ar" (default: the one the checkpoint was trained for; a decoder the training
    objective does not support raises). steps: (T_fine, T_val) for DFM, default the checkpoint's own
    (config.steps_fine, steps_val); DD runs T_fine + T_val steps.
    cache: "auto" (exact prefix cache for prefix-LM models, adaptive for bidirectional ones), "prefix",
    "adaptive" or "none". execute_horizon: actions of each chunk used before re-planning (default: config).
    warm_start: DFM only, refine each new chunk from the previous plan's unexecuted actions
    (``policy/warm_start.py``) with the config's ``warm_start_t0`` / ``warm_start_steps_*``; the first
    plan of an episode decodes cold. None: the checkpoint's ``warm_start``.
    inference_delay / freeze_prefix: real-time execution (module docstring); None: the checkpoint's
    ``inference_delay`` (0 = synchronous) and ``freeze_prefix``.
    """

    def __init__(
        self,
        bundle: Any,
        decoder: str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        steps: tuple[int, int] | None = None,
        execute_horizon: int | None = None,
        cache: str = "auto",
        schedule: tuple[float, float] | None = None,
        warm_start: bool | None = None,
        inference_delay: int | None = None,
        freeze_prefix: bool | None = None,
    ):
        self.bundle = bundle
        self.model = bundle.model
        self.config = self.model.config
        self.action_tokenizer = bundle.action_tokenizer
        self.processor = bundle.processor
        supported = _OBJECTIVE_DECODERS[self.config.objective]
        decoder = decoder or supported[0]
        if decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, got {decoder!r}")
        if decoder not in supported:
            raise ValueError(
                f"decoder {decoder!r}: this checkpoint was trained with objective {self.config.objective!r}, "
                f"which supports decoder(s) {supported}; load a checkpoint trained for {decoder!r}"
            )
        self.decoder = decoder
        if steps is None:  # the checkpoint's own decoding steps (ModelConfig.steps_fine / steps_val)
            steps = (self.config.steps_fine, self.config.steps_val)
        if len(steps) != 2 or min(steps) < 0 or steps[0] + steps[1] < 1:
            raise ValueError(f"steps: expected (T_fine, T_val) with non-negative ints, got {steps}")
        self.steps = (int(steps[0]), int(steps[1]))
        if cache == "auto":
            cache = "adaptive" if self.config.attention == "bidirectional" else "prefix"
        if cache not in ("prefix", "adaptive", "none"):
            raise ValueError(f"cache: expected 'auto', 'prefix', 'adaptive' or 'none', got {cache!r}")
        self.cache = cache
        horizon = self.action_tokenizer.horizon
        self.execute_horizon = int(execute_horizon or min(self.config.execute_horizon or horizon, horizon))
        if not 1 <= self.execute_horizon <= horizon:
            raise ValueError(
                f"execute_horizon: expected 1..{horizon} (the chunk length), got {self.execute_horizon}"
            )
        self.device = torch.device(device)
        self.seed = int(seed)
        from dfm_vla.policy.probability_path import slot_token_ids

        self._allowed = torch.zeros(self.action_tokenizer.vocab_size, dtype=torch.bool, device=self.device)
        self._allowed[torch.as_tensor(slot_token_ids(self.action_tokenizer), dtype=torch.long)] = True
        self._path = None
        if decoder == "dfm":
            self.set_schedule(*(schedule or (None, None)))
        self.warm_start = bool(self.config.warm_start if warm_start is None else warm_start)
        if self.warm_start and (decoder != "dfm" or self.action_tokenizer.kind != "bins"):
            raise ValueError(
                "warm_start: needs the dfm decoder and a bins action tokenizer (one token per step and "
                f"dimension); this policy decodes {decoder!r} over {self.action_tokenizer.kind!r} tokens"
            )
        if self.warm_start and self.execute_horizon >= horizon:
            raise ValueError(
                f"warm_start: needs execute_horizon < the chunk length {horizon} (unexecuted actions to "
                f"refine from), got execute_horizon {self.execute_horizon}"
            )
        cfg = self.config
        self.inference_delay = int(cfg.inference_delay if inference_delay is None else inference_delay)
        self.freeze_prefix = bool(cfg.freeze_prefix if freeze_prefix is None else freeze_prefix)
        delay, most = self.inference_delay, min(self.execute_horizon, horizon - self.execute_horizon)
        if delay and not 1 <= delay <= most:
            raise ValueError(
                f"inference_delay: expected 0 (synchronous) or 1..{most} control steps (at most "
                f"execute_horizon {self.execute_horizon}, and inference_delay + execute_horizon <= the chunk "
                f"length {horizon}), got {delay}"
            )
        if delay and self.freeze_prefix and self.action_tokenizer.kind != "bins":
            raise ValueError(
                "freeze_prefix: needs a bins action tokenizer (one token per step and dimension); this "
                f"policy decodes {self.action_tokenizer.kind!r} tokens: pass freeze_prefix=False"
            )
        self._queues: list[deque] = []  # per env: (action (D,), its step in its chunk, first served of it)
        self._started: list[bool] = []  # per env: the last action served was the first of a new chunk
        self._previous: list[np.ndarray | None] = []  # per env: tokens (L,) of its last plan (warm start)
        self._generators: list[torch.Generator] = []
        self.last_plan: PlanInfo | None = None
        self.num_plans = 0

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        decoder: str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        steps: tuple[int, int] | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DFMPolicy:
        """Load a checkpoint folder written by ``save_pretrained`` (see :mod:`dfm_vla.policy.checkpoint`)."""
        from dfm_vla.policy.checkpoint import load_pretrained

        bundle = load_pretrained(directory, device=device, dtype=dtype)
        return cls(bundle, decoder=decoder, device=device, seed=seed, steps=steps, **kwargs)

    def set_schedule(self, c: float | None = None, alpha: float | None = None) -> None:
        """Rebuild the DFM path with beta_t = c (t/(1-t))^alpha; None keeps the checkpoint's value.

        The path is measured as the checkpoint was trained (``extra["metric_path"]``: distance, metric,
        normalisation, c, alpha); only the schedule changes here (for decoding ablations).
        """
        if self.decoder != "dfm":
            raise ValueError(
                f"set_schedule: only the dfm decoder has a schedule (this policy: {self.decoder!r})"
            )
        settings = dict(self.bundle.extra.get("metric_path", {}))
        for name, value in (("c", c), ("alpha", alpha)):
            if value is not None:
                if not value > 0:
                    raise ValueError(f"schedule {name}: expected a positive number, got {value!r}")
                settings[name] = float(value)
        self._path = self.model.metric_path(self.action_tokenizer, settings).to(self.device)

    # ---- episode state ---------------------------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return self.action_tokenizer.action_dim

    @property
    def uses_images(self) -> bool:
        """True when the model reads ``obs["images"]`` (a rollout then renders them before each plan)."""
        return bool(self.config.image_views)

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """(height, width) in pixels of the images the policy was trained on; None if not recorded."""
        hw = (self.config.extra or {}).get("image_hw")
        return (int(hw[0]), int(hw[1])) if hw and self.uses_images else None

    def reset(self, seed: int | None = None) -> None:
        """Start new episodes: drop queued actions; with ``seed``, re-seed (env i gets ``seed + i``)."""
        self._queues = [deque() for _ in self._queues]
        self._previous = [None for _ in self._previous]
        self._started = [False for _ in self._started]
        if seed is not None:
            self.seed = int(seed)
            self._generators = []

    def seed_env(self, env_index: int, seed: int) -> None:
        """Re-seed env ``env_index``'s generator alone and drop its queued actions (e.g. per episode; the
        policy server gives each remote client's envs their own indices and seeds them as an in-process
        policy seeds envs 0, 1, ...)."""
        env_index = int(env_index)
        self._ensure_envs(env_index + 1)
        self._generators[env_index].manual_seed(int(seed))
        self._queues[env_index] = deque()
        self._previous[env_index] = None

    @property
    def needs_plan(self) -> bool:
        """True when the next :meth:`act` will plan a new chunk (so a rollout renders images only then)."""
        return self._needs_plan(0)

    @property
    def started_chunk(self) -> bool:
        """True when the last action :meth:`act` returned was the first of a new chunk (a seam)."""
        return bool(self._started and self._started[0])

    def needs_plan_batch(self, num_envs: int) -> list[bool]:
        """Per env, whether the next :meth:`act_batch` over ``num_envs`` envs plans for it."""
        return [self._needs_plan(i) for i in range(num_envs)]

    def _needs_plan(self, i: int) -> bool:
        if i >= len(self._queues) or not self._queues[i]:
            return True
        return self.inference_delay > 0 and len(self._queues[i]) == self.inference_delay

    def _ensure_envs(self, n: int) -> None:
        while len(self._queues) < n:
            self._queues.append(deque())
            self._started.append(False)
        while len(self._previous) < n:
            self._previous.append(None)
        while len(self._generators) < n:
            g = torch.Generator(device=self.device)
            g.manual_seed(self.seed + len(self._generators))
            self._generators.append(g)

    # ---- acting ------------------------------------------------------------------------------------------
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The next action (action_dim,) float32 for one env (env 0 of :meth:`act_batch`).

        ``obs`` is checked before each plan (:mod:`dfm_vla.policy.processor`); a ``ValueError`` naming
        the key is raised for a missing key, a wrong shape or dtype, a state value that is NaN, inf or
        beyond 1e6 in magnitude (a units or wiring bug, never a robot state), and an empty
        ``obs["language"]`` for a language-conditioned policy. Finite states outside the training
        statistics are accepted without a warning: the policy then acts out of distribution.
        """
        if not isinstance(obs, Mapping):
            raise ValueError(
                f"obs: expected a dict with 'language', 'images', state keys; got {type(obs).__name__}"
            )
        return self.act_batch([obs])[0]

    def act_batch(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The next action of each of B envs: (B, action_dim) float32; envs whose chunk ran out re-plan
        together in one batched pass. Only the observations of planning envs are read."""
        if isinstance(observations, Mapping) or len(observations) == 0:
            raise ValueError("observations: expected a non-empty list of obs dicts (use act(obs) for one)")
        num_envs = len(observations)
        self._ensure_envs(num_envs)
        planning = [i for i in range(num_envs) if self._needs_plan(i)]
        if planning:
            self._plan(planning, [observations[i] for i in planning])
        # inference_delay == execute_horizon: the next request goes out with a chunk's first action, so a
        # first chunk (served from step 0, nothing running before it) is followed by a plan at once
        again = [i for i in planning if self._needs_plan(i)]
        if again:
            self._plan(again, [observations[i] for i in again])
        actions = []
        for i in range(num_envs):
            action, _, self._started[i] = self._queues[i].popleft()
            actions.append(action)
        return np.stack(actions)

    @torch.no_grad()
    def plan(
        self,
        observations: Sequence[Mapping[str, Any]],
        env_indices: Sequence[int] | None = None,
        frozen_actions: np.ndarray | None = None,
    ) -> np.ndarray:
        """Decode one chunk per observation without touching the queues: (B, H, action_dim) float32.

        frozen_actions: (B, d, action_dim) actions, 1 <= d < H, that run while this plan is made; the
        chunks' first d steps are fixed to them (their tokens under the action tokenizer) and the decoder
        refines the rest. Bins tokenizers only.
        """
        env_indices = list(env_indices) if env_indices is not None else list(range(len(observations)))
        self._ensure_envs(max(env_indices) + 1)
        frozen = None if frozen_actions is None else self._frozen_tokens(frozen_actions, len(env_indices))
        return self._decode_chunks(env_indices, observations, frozen=frozen)

    def _frozen_tokens(self, frozen_actions: Any, batch: int) -> torch.Tensor:
        """(B, d, D) actions -> (B, d * D) token ids of the chunk's first d steps."""
        tok = self.action_tokenizer
        if tok.kind != "bins":
            raise ValueError(f"frozen_actions: needs a bins action tokenizer, this policy has {tok.kind!r}")
        arr = np.asarray(frozen_actions, dtype=np.float64)
        shape_ok = arr.ndim == 3 and arr.shape[0] == batch and arr.shape[2] == tok.action_dim
        if not shape_ok or not 1 <= arr.shape[1] < tok.horizon:
            raise ValueError(
                f"frozen_actions: expected shape ({batch}, d, {tok.action_dim}) with 1 <= d < {tok.horizon}, "
                f"got {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError("frozen_actions: expected finite actions, got NaN or inf")
        steps = arr.shape[1]
        padded = np.concatenate([arr, np.repeat(arr[:, -1:], tok.horizon - steps, axis=1)], axis=1)
        tokens = tok.encode(padded)[:, : steps * tok.action_dim]
        return torch.as_tensor(tokens, dtype=torch.long, device=self.device)

    def _plan(self, env_indices: list[int], observations: list[Mapping[str, Any]]) -> None:
        """Plan for these envs and queue their chunks. Envs plan in groups of one kind (cold, warm-started,
        with a frozen prefix), so an env's chunk never depends on which other envs planned with it."""
        from dfm_vla.policy.warm_start import shifted_plan

        obs = dict(zip(env_indices, observations, strict=True))
        running = {i: list(self._queues[i]) for i in env_indices}  # actions that run while planning
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i in env_indices:
            warm = self.warm_start and self._previous[i] is not None
            groups.setdefault((warm, bool(running[i]) and self.freeze_prefix), []).append(i)
        horizon, dim, delay = self.action_tokenizer.horizon, self.action_dim, self.inference_delay
        for (is_warm, is_frozen), group in sorted(groups.items()):
            guesses = frozen = None
            if is_warm or is_frozen:
                previous = torch.as_tensor(np.stack([self._previous[i] for i in group]), device=self.device)
                # the step of the last chunk that runs next: the first running one (they all come from
                # that chunk); with none running the chunk ran out, served from its step 0 (a chunk served
                # from a later step is only ever planned ahead of, so its queue never runs dry)
                executed = [running[i][0][1] if running[i] else self.execute_horizon for i in group]
            if is_warm:
                guesses = torch.cat(
                    [shifted_plan(previous[r : r + 1], dim, ex) for r, ex in enumerate(executed)]
                )
            if is_frozen:
                steps = previous.reshape(len(group), horizon, dim)
                frozen = torch.stack([steps[r, ex : ex + delay].reshape(-1) for r, ex in enumerate(executed)])
            chunks = self._decode_chunks(group, [obs[i] for i in group], guesses=guesses, frozen=frozen)
            for row, (i, chunk) in enumerate(zip(group, chunks, strict=True)):
                start = delay if running[i] else 0  # the first `delay` steps ran meanwhile
                rest = [(chunk[s], s, s == start) for s in range(start, start + self.execute_horizon)]
                self._queues[i] = deque(running[i] + rest)
                self._previous[i] = self.last_plan.tokens[row]

    @torch.no_grad()
    def _decode_chunks(
        self,
        env_indices: list[int],
        observations: Sequence[Mapping[str, Any]],
        guesses: torch.Tensor | None = None,
        frozen: torch.Tensor | None = None,
    ) -> np.ndarray:
        """(B, H, action_dim) chunks; ``guesses`` (B, L) warm-starts DFM from those tokens (else cold);
        ``frozen`` (B, P) token ids fixed in the first P slots (every decoder)."""
        from dfm_vla.policy.samplers import ar_sample, dd_sample, dfm_sample

        model = self.model
        batch = len(env_indices)
        num_slots = self.action_tokenizer.num_slots
        generators = [self._generators[i] for i in env_indices]
        prefix = self.processor(list(observations)).to(self.device)

        start = time.perf_counter()
        if self.decoder == "ar":
            state = model.prefill(prefix)
        elif self.cache == "none":
            state = model._embed_only_state(prefix)
        else:
            state = model.prefill(prefix)
        _sync(self.device)
        prefix_ms = 1e3 * (time.perf_counter() - start)

        start = time.perf_counter()
        if self.decoder == "ar":
            stepper = model.ar_stepper(state)
            result = ar_sample(
                stepper,
                batch,
                num_slots,
                boa_id=self.action_tokenizer.boa_id,
                allowed=self._allowed,
                prefix=frozen,
                device=self.device,
            )
            model_calls = stepper.num_calls
        else:
            denoiser = model.make_denoiser(state, cache=self.cache)
            fixed = None
            if frozen is not None:  # (B, L): the frozen ids first, then -1 (DFM) or the mask id (DD)
                free = -1 if self.decoder == "dfm" else self.action_tokenizer.mask_id
                fixed = torch.full((batch, num_slots), free, dtype=torch.long, device=self.device)
                fixed[:, : frozen.shape[1]] = frozen
            if self.decoder == "dd":
                result = dd_sample(
                    denoiser,
                    self.action_tokenizer.mask_id,
                    batch,
                    num_slots,
                    steps=sum(self.steps),
                    x0=fixed,
                    allowed=self._allowed,
                    device=self.device,
                )
            else:
                result = self._dfm(denoiser, batch, num_slots, generators, dfm_sample, guesses, fixed)
            model_calls = denoiser.num_calls
        _sync(self.device)
        refine_ms = 1e3 * (time.perf_counter() - start)

        start = time.perf_counter()
        tokens = result.tokens.cpu().numpy()
        decoded = self.action_tokenizer.decode(tokens)
        decode_ms = 1e3 * (time.perf_counter() - start)
        self.num_plans += 1
        self.last_plan = PlanInfo(
            decoder=self.decoder,
            env_indices=list(env_indices),
            changed_per_step=result.changed_per_step.cpu().numpy(),
            valid=np.asarray(decoded.valid, dtype=bool).reshape(batch),
            tokens=tokens,
            prefix_ms=prefix_ms,
            refine_ms=refine_ms,
            decode_ms=decode_ms,
            model_calls=int(model_calls),
            prefix_calls=int(state.prefix_calls),
            frozen_steps=0 if frozen is None else frozen.shape[1] // self.action_dim,
        )
        return np.asarray(decoded.actions, dtype=np.float32).reshape(batch, self.action_tokenizer.horizon, -1)

    def _dfm(
        self,
        denoiser: Any,
        batch: int,
        num_slots: int,
        generators: list[torch.Generator],
        dfm_sample,
        guesses: torch.Tensor | None = None,
        frozen: torch.Tensor | None = None,
    ) -> Any:
        """DFM with one generator per env: a batch of one runs directly; several run in lock step (one
        thread per env drives its own sampler, every model call is batched across them). ``guesses``
        (B, L): start each env from its guess noised to t0 (warm start) instead of from the source.
        ``frozen`` (B, L): token ids fixed for the whole decode, -1 where refined."""
        from dfm_vla.policy.samplers import uniform_time_grid
        from dfm_vla.policy.warm_start import warm_start_state

        cfg = self.config
        use_head = cfg.rate_head
        if guesses is None:
            t_start, (fine, val) = 0.0, self.steps
        else:
            t_start, fine, val = cfg.warm_start_t0, cfg.warm_start_steps_fine, cfg.warm_start_steps_val
        grid = uniform_time_grid(fine, t_start, device=self.device) if fine > 0 else None
        t_val = cfg.val_time if cfg.val_time is not None else (float(grid[-2]) if fine > 0 else t_start)

        def sample(den: Callable, rate: Callable | None, gen: torch.Generator, i: int) -> Any:
            x0 = None if guesses is None else warm_start_state(self._path, guesses[i : i + 1], t_start, gen)
            return dfm_sample(
                den,
                self._path,
                1,
                num_slots,
                steps_fine=fine,
                steps_val=val,
                generator=gen,
                x0=x0,
                time_grid=grid,
                t_val=t_val,
                temperature=cfg.posterior_temperature,
                rate_fn=rate,
                frozen=None if frozen is None else frozen[i : i + 1],
                device=self.device,
            )

        if batch == 1:
            return sample(denoiser, denoiser.rate_fn if use_head else None, generators[0], 0)
        lockstep = _Lockstep({"logits": denoiser, "rates": denoiser.rate_fn}, batch)
        results = lockstep.run(
            lambda i: sample(
                lockstep.fn("logits", i), lockstep.fn("rates", i) if use_head else None, generators[i], i
            )
        )
        from dfm_vla.policy.samplers import SampleResult

        return SampleResult(
            tokens=torch.cat([r.tokens for r in results]),
            changed_per_step=torch.cat([r.changed_per_step for r in results]),
            num_model_calls=results[0].num_model_calls,
            times=results[0].times,
        )


class _Lockstep:
    """Runs n single-row samplers in n threads; each model call waits for all n and runs once, batched."""

    def __init__(self, batched: dict[str, Callable], n: int):
        self.batched, self.n = batched, n
        self.inputs: list[Any] = [None] * n
        self.output: Any = None
        self.error: BaseException | None = None
        self.barrier = threading.Barrier(n, action=self._run_batched)

    def fn(self, kind: str, i: int) -> Callable:
        def call(x: torch.Tensor, t: torch.Tensor) -> Any:
            self.inputs[i] = (kind, x, t)
            self.barrier.wait()
            return _row(self.output, i)

        return call

    def _run_batched(self) -> None:
        kinds = {inp[0] for inp in self.inputs}
        if len(kinds) != 1:
            raise RuntimeError(f"lock-step samplers diverged: calls of kinds {sorted(kinds)} in one step")
        x = torch.cat([inp[1] for inp in self.inputs])
        t = torch.cat([torch.as_tensor(inp[2]).reshape(-1) for inp in self.inputs])
        self.output = self.batched[kinds.pop()](x, t)

    def run(self, target: Callable[[int], Any]) -> list[Any]:
        results: list[Any] = [None] * self.n

        def work(i: int) -> None:
            try:
                results[i] = target(i)
            except threading.BrokenBarrierError:
                pass
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread below
                self.error = self.error or err
                self.barrier.abort()

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(self.n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self.error is not None:
            raise self.error
        if any(r is None for r in results):
            raise RuntimeError("lock-step sampling failed: a model call raised inside the batched step")
        return results


def _row(output: Any, i: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output[i : i + 1]
    from dfm_vla.policy.rate_head import RateHeadOutput

    if isinstance(output, RateHeadOutput):
        return RateHeadOutput(
            log_rate=output.log_rate[i : i + 1], replacement_logits=output.replacement_logits[i : i + 1]
        )
    raise TypeError(f"unexpected model output type {type(output).__name__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
