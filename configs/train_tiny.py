"""Tiny two-stage training on synthetic latent clips (tests, laptop smoke runs; seconds a step).

    mirage-jax train --config configs/train_tiny.py --config.train.workdir=/tmp/tiny1
    mirage-jax train --config configs/train_tiny.py:stage2 --config.train.workdir=/tmp/tiny2 \\
        --config.train.init_from=/tmp/tiny1
"""

import dataclasses

import ml_collections

from mirage_jax.models.wan.dit import WanDiTConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage = {None: 1, "": 1, "stage1": 1, "stage2": 2}[arg]
    c = ml_collections.ConfigDict()
    c.name = f"train_tiny_stage{stage}"
    c.stage = stage
    c.model = ml_collections.ConfigDict(
        dict(dit=dataclasses.asdict(WanDiTConfig.tiny()), hint_scale=1.0, lora_rank=4 if stage == 2 else 0,
             lora_alpha=4.0, lora_dropout=0.05, control_init="reference")
    )
    c.runtime = ml_collections.ConfigDict(
        dict(param_dtype="float32", dtype="float32", attention="xla", remat="none", scan_layers=False)
    )
    c.sample = ml_collections.ConfigDict(
        dict(num_target=3, max_reference=2, max_preceding=1, image_hw=(32, 32), shift=5.0, text_drop=0.1,
             readout_dropout=0.1, reference_threshold=0.04, voxel_size=0.1)
    )
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-3, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0, schedule="constant",
             warmup_steps=0, grad_accum=1)
    )
    c.data = ml_collections.ConfigDict(
        dict(source="synthetic", num_clips=16, num_frames=8, latent_hw=(8, 8), text_len=5, batch_size=8, seed=0,
             shuffle=True)
    )
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("fsdp", "tp"), rules="fsdp"))
    c.distributed = ml_collections.ConfigDict(
        dict(initialize=False, coordinator_address=ml_collections.config_dict.placeholder(str),
             num_processes=ml_collections.config_dict.placeholder(int),
             process_id=ml_collections.config_dict.placeholder(int))
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=100, seed=0, workdir=ml_collections.config_dict.placeholder(str),
             init_from=ml_collections.config_dict.placeholder(str),
             init_backbone=ml_collections.config_dict.placeholder(str), log_every=10, checkpoint_every=50, keep=2,
             async_checkpoint=True, eval_every=0, tensorboard=True, progress=True)
    )
    return c
