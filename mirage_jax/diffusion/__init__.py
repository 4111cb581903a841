"""Diffusion schedules: rectified flow (:mod:`.flow`; training noise, targets, time shift);
samplers (:mod:`.samplers`: FlowUniPC, FlowEuler, denoise) and guidance (:mod:`.guidance`)."""

from mirage_jax.diffusion.flow import (  # noqa: F401
    NUM_TRAIN_TIMESTEPS,
    add_noise,
    sample_sigmas,
    shift_sigma,
    sigma_to_timestep,
    velocity_target,
    x0_from_velocity,
)
from mirage_jax.diffusion.guidance import cfg_velocity, guided_velocity  # noqa: F401
from mirage_jax.diffusion.samplers import (  # noqa: F401
    EulerState,
    FlowEuler,
    FlowUniPC,
    UniPCState,
    denoise,
    flow_schedule,
)
