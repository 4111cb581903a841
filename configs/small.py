"""The small Mirage trained on our procedural worlds by ``make train-small`` (issue 10, spec 12).

    python experiments/train_small.py --workdir runs/small --out weights/small

Every part uses the project's code paths at a small size: a Wan VAE (Wan2.2-style: 2x2
patchify, residual down / up blocks with the AvgDown3D / DupUp3D shortcuts, two spatial / two
temporal downsamples: 128 x 128 -> 16 x 16 latents, z 16, temporal stride 4), latent
preprocessing (``mirage_jax.data.latents.preprocess``), a WanDiT (width 128, 4 layers, patch
(1, 2, 2): 64 tokens per latent frame) with a control branch on layers 0 and 2 trained by
``mirage_jax.train.Trainer`` (backbone pretraining, stage 1 control branch, stage 2 LoRA; AdamW
with warm-up + cosine decay), a frozen random-initialised tiny umT5 (placeholder-scale text
encoder, fixed seed) and a small U-Net depth model (:mod:`mirage_jax.models.depth`).

Sizing (spec 12, measured on the 2-core CPU): the Wan VAE's training step is the expensive part
(3D convolutions), so it trains on 64 x 64 crops (the network is fully convolutional), first
``image_steps`` on single frames (the causal VAE encodes frame 0 alone: ~0.3 s for 8 crops
against ~1.6 s for 2 crops of 9 frames), then ``steps`` on 9-frame clips (1 + 4 + 4: with 5
frames the causal decoder never sees a chunk whose cache comes from a previous 4-frame chunk
and every frame after the 5th decodes badly). The residual (Wan2.2) blocks matter at this budget:
after 50 steps of 9-frame training (32 x 32 crops, same schedule) the held-out reconstruction was
12.8 dB with them against 12.0 dB without (Wan2.1-style blocks, dim_mult (1, 2, 4)), with frames
1-4 no worse than frame 0 instead of worse. The DiT step at 832 tokens is ~0.3 s (the full
run's backbone: 2000 steps in 645 s on the 2-core CPU shared with other jobs).

``steps_scale`` (``--scale`` of the driver) multiplies every part's step count: 1.0 is the
full budget (<= 90 minutes on the 2-core CPU); a reduced run says so in the model card.
"""

import dataclasses

import ml_collections

from mirage_jax.models.depth import DepthConfig
from mirage_jax.models.umt5 import UMT5Config
from mirage_jax.models.wan.dit import WanDiTConfig
from mirage_jax.models.wan.vae import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, WanVAEConfig

IMAGE_HW = (128, 128)
Z_DIM = 16
TEXT_LEN = 16


def vae_config() -> WanVAEConfig:
    """8x spatial, 4x temporal compression; latents statistics are replaced by the measured ones
    after training (``latents_mean`` / ``latents_std``)."""
    return WanVAEConfig(
        base_dim=16, decoder_base_dim=16, z_dim=Z_DIM, dim_mult=(1, 2, 2), num_res_blocks=1,
        temperal_downsample=(True, True), is_residual=True, in_channels=12, out_channels=12, patch_size=2,
        scale_factor_temporal=4, scale_factor_spatial=8,
        latents_mean=WAN22_LATENTS_MEAN[:Z_DIM], latents_std=WAN22_LATENTS_STD[:Z_DIM],
    )  # fmt: skip


def text_config() -> UMT5Config:
    return UMT5Config.tiny()


def dit_config() -> WanDiTConfig:
    return WanDiTConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=Z_DIM,
                        out_channels=Z_DIM, text_dim=text_config().d_model, freq_dim=64, ffn_dim=512, num_layers=4)


def depth_config() -> DepthConfig:
    return DepthConfig(base=16, levels=4, groups=4, log_depth_offset=1.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "small"
    c.steps_scale = 1.0
    c.seed = 0
    # Training worlds: scene seeds [seed_offset, seed_offset + num_clips); the held-out worlds of
    # mirage_jax.eval / the demo are outside this range (checked by the driver).
    c.data = ml_collections.ConfigDict(dict(
        num_clips=96, seed_offset=0, image_hw=IMAGE_HW, num_frames=49, kind="indoor",
        trajectories=("walk", "loop"), fov_deg=60.0, fps=16))
    # VAE: image_steps on single frames (batch image_batch_size), then steps on 9-frame clips
    c.vae = ml_collections.ConfigDict(dict(
        image_steps=1000, image_batch_size=8, steps=600, batch_size=2, frames=9, crop=64, learning_rate=2e-3,
        kl_weight=1e-6, checkpoint_every=100))
    c.text = ml_collections.ConfigDict(dict(seed=0, max_length=TEXT_LEN))
    c.dit = ml_collections.ConfigDict(dict(
        control_layers=(0, 2), lora_rank=16, lora_alpha=16.0, batch_size=2,
        num_target=9, max_reference=2, max_preceding=2, readout_dropout=0.1,
        backbone_steps=2000, stage1_steps=2000, stage2_steps=800,
        backbone_lr=5e-4, stage1_lr=5e-4, stage2_lr=2e-4, warmup_steps=50, checkpoint_every=100))
    # "latent" = Mirage; "rgb" = the explicit RGB-cache variant (experiments/train_rgb_ablation.py)
    c.dit.control_source = "latent"
    c.depth = ml_collections.ConfigDict(dict(steps=1500, batch_size=8, learning_rate=2e-3, checkpoint_every=100))
    return c


def trainer_config(c: ml_collections.ConfigDict, stage: int, *, workdir: str, steps: int, learning_rate: float,
                   data_path: str, score_path: str, empty_text_path: str, init_from=None,
                   init_backbone=None) -> ml_collections.ConfigDict:
    """The ``mirage-jax train`` config of one DiT part (same sections as configs/train_5b.py)."""
    ph = ml_collections.config_dict.placeholder
    d = c.dit
    t = ml_collections.ConfigDict()
    t.name = f"small_stage{stage}"
    t.stage = stage
    t.model = ml_collections.ConfigDict(dict(
        dit=dataclasses.asdict(dit_config()), control_layers=tuple(d.control_layers), hint_scale=1.0,
        lora_rank=d.lora_rank if stage == 2 else 0, lora_alpha=d.lora_alpha, lora_dropout=0.05,
        control_init="reference"))
    t.runtime = ml_collections.ConfigDict(
        dict(param_dtype="float32", dtype="float32", attention="xla", remat="none", scan_layers=False))
    t.sample = ml_collections.ConfigDict(dict(
        num_target=d.num_target, max_reference=d.max_reference, max_preceding=d.max_preceding,
        image_hw=tuple(c.data.image_hw), shift=5.0, text_drop=0.1, readout_dropout=d.readout_dropout,
        reference_threshold=0.04, voxel_size=0.1, control_source=d.control_source))
    t.optim = ml_collections.ConfigDict(dict(
        learning_rate=learning_rate, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0, schedule="warmup_cosine",
        warmup_steps=max(1, min(d.warmup_steps, steps // 2)),
        decay_steps=max(steps, 2), grad_accum=1))
    t.data = ml_collections.ConfigDict(dict(
        source="latent_clips", path=data_path, split="train", batch_size=d.batch_size, seed=c.seed, shuffle=True))
    t.constants = ml_collections.ConfigDict(dict(score_latent=score_path, empty_text=empty_text_path))
    t.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("fsdp", "tp"), rules="fsdp"))
    t.distributed = ml_collections.ConfigDict(
        dict(initialize=False, coordinator_address=ph(str), num_processes=ph(int), process_id=ph(int)))
    t.train = ml_collections.ConfigDict(dict(
        steps=steps, seed=c.seed, workdir=workdir, init_from=init_from if init_from else ph(str),
        init_backbone=init_backbone if init_backbone else ph(str), log_every=10,
        checkpoint_every=d.checkpoint_every, keep=2, async_checkpoint=False, eval_every=0, tensorboard=False,
        progress=True))
    return t
