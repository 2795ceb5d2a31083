"""BDIA as a diffusers scheduler: ``BDIAScheduler`` drops into StableDiffusion(XL)Pipeline.

    pipe.scheduler = BDIAScheduler.from_config(pipe.scheduler.config, gamma=0.5)
    latents = pipe(prompt, num_inference_steps=25, output_type="latent").images

It is a DDIMScheduler (same config, timesteps, ``add_noise``) whose ``step`` is the BDIA sampler of
``bdia.sampling``: the first step is plain DDIM, every later one
z_{i−1} = γ·z_{i+1} + D(z_i; i→i−1) − γ·D(z_i; i→i+1), with the DDIM map and the BDIA increment taken from
``bdia.sampling`` and the level grid from ``bdia.grid`` (nothing re-derived here). With the same settings it
gives the latents of ``bdia sample --state-dtype S`` where S is the pipeline's latent dtype (docs/numerics.md).

BDIA is deterministic and invertible: ``eta`` must be 0, and ``clip_sample``/``thresholding`` in the config are
ignored, as ``bdia sample`` ignores them.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

from .batching import guided_eps
from .errors import InvalidParameter
from .grid import LevelGrid
from .params import check_gamma
from .sampling import FloatLattice, _bdia_increment, ddim


class BDIAScheduler(DDIMScheduler):
    """BDIA-DDIM sampling (arXiv 2307.10829) with γ in [0, 1]; γ = 0 is plain DDIM.

    It keeps the previous latent z_{i+1} between ``step`` calls; ``set_timesteps`` starts a new walk.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        gamma: float = 1.0,
    ) -> None:
        check_gamma(float(gamma), 1, inverting=False)
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.grid: LevelGrid | None = None
        self._previous: tuple[int, torch.Tensor] | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """DDIM's timesteps for ``num_inference_steps``, and the level grid they make (``LevelGrid``)."""
        super().set_timesteps(num_inference_steps, device)
        self.grid = LevelGrid.from_scheduler(self, int(num_inference_steps))
        if [int(t) for t in self.timesteps] != list(reversed(self.grid.timesteps[1:])):
            raise InvalidParameter("the scheduler's timesteps and its level grid disagree")
        self._previous = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor]:
        """z_{i−1} from z_i = ``sample`` and the (guided) network output at level i.

        The first step after ``set_timesteps`` (or after a skipped level) is plain DDIM; later ones are BDIA
        steps using the z_{i+1} this scheduler saw last. ``pred_original_sample`` is not computed (None).
        """
        if self.grid is None:
            raise InvalidParameter("call set_timesteps before step")
        if eta != 0:
            raise InvalidParameter(f"BDIA is deterministic: eta must be 0, got {eta}")
        grid, gamma = self.grid, float(self.config.gamma)
        i = grid.level(int(timestep))
        eps = guided_eps(model_output, sample, i, grid, 1.0)  # ε (a v prediction converted), in sample's dtype
        previous = self._previous
        if previous is None or previous[0] != i + 1 or gamma == 0.0:
            out = ddim(sample, eps, grid, i, i - 1)
        else:
            delta = _bdia_increment(FloatLattice(sample.dtype), sample, eps, grid, i, gamma)
            out = previous[1] + delta if gamma == 1.0 else gamma * previous[1] + delta
        self._previous = (i, sample)
        return DDIMSchedulerOutput(prev_sample=out, pred_original_sample=None) if return_dict else (out,)


__all__ = ["BDIAScheduler"]
