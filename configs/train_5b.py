"""Mirage training of Wan2.2-TI2V-5B, the reference's hyperparameters (spec sections 4, 10.5).

    mirage-jax train --config configs/train_5b.py:stage1 --config.train.workdir=runs/stage1 \\
        --config.data.path=data/latent_clips --config.constants.score_latent=score.npy \\
        --config.constants.empty_text=empty_text.npy
    mirage-jax train --config configs/train_5b.py:stage2 --config.train.workdir=runs/stage2 \\
        --config.train.init_from=runs/stage1 ...

Reference: AdamW lr 1e-5, betas (0.9, 0.999), weight decay 0.01, constant lr, gradient norm
clip 1.0, bf16, gradient checkpointing, 10k steps per stage, batch 1 per GPU x accumulation 4,
FSDP; stage 2 LoRA rank 32, alpha 32, dropout 0.05 on the backbone's attention and FFN linears.
Differences (on purpose): fp32 master weights with bf16 compute (the reference keeps bf16
weights), references (0..4) and preceding frames (0..2) sampled per step (the reference's
README command trains with none), sigma per sample, full resumable checkpoints.

``data.batch_size`` is the GLOBAL batch: 8 devices x 1 x accumulation 4 = 32 here; set it to
4 x the number of data-parallel devices (``optim.grad_accum`` micro-batches of one sample per
device). Stage 1 loads the pretrained DiT from ``train.init_backbone`` (the orbax directory
that ``mirage-jax convert`` writes); stage 2 starts from stage 1's final weights
(``train.init_from``, stage 1's run directory).
"""

import dataclasses

import ml_collections

from mirage_jax.models.wan.dit import WanDiTConfig


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stage = {None: 1, "": 1, "stage1": 1, "stage2": 2}[arg]
    ph = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()
    c.name = f"train_5b_stage{stage}"
    c.stage = stage
    c.model = ml_collections.ConfigDict(
        dict(dit=dataclasses.asdict(WanDiTConfig.wan22_ti2v_5b()), hint_scale=1.0, lora_rank=32 if stage == 2 else 0,
             lora_alpha=32.0, lora_dropout=0.05, control_init="reference")
    )
    c.runtime = ml_collections.ConfigDict(
        dict(param_dtype="float32", dtype="bfloat16", attention="auto", remat="full", scan_layers=True)
    )
    c.sample = ml_collections.ConfigDict(
        dict(num_target=9, max_reference=4, max_preceding=2, image_hw=(704, 1280), shift=5.0, text_drop=0.1,
             readout_dropout=0.0, reference_threshold=0.04, voxel_size=0.1)
    )
    c.optim = ml_collections.ConfigDict(
        dict(learning_rate=1e-5, b1=0.9, b2=0.999, weight_decay=0.01, clip_norm=1.0, schedule="constant",
             warmup_steps=0, grad_accum=4)
    )
    c.data = ml_collections.ConfigDict(
        dict(source="latent_clips", path=ph(str), split="train", batch_size=32, seed=0, shuffle=True,
             read_threads=4, read_buffer_size=8)
    )
    c.constants = ml_collections.ConfigDict(dict(score_latent=ph(str), empty_text=ph(str)))
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1), axes=("fsdp", "tp"), rules="fsdp"))
    c.distributed = ml_collections.ConfigDict(
        dict(initialize=False, coordinator_address=ph(str), num_processes=ph(int), process_id=ph(int))
    )
    c.train = ml_collections.ConfigDict(
        dict(steps=10_000, seed=0, workdir=ph(str), init_from=ph(str), init_backbone=ph(str), log_every=10,
             checkpoint_every=1000, keep=3,
             async_checkpoint=True, eval_every=0, tensorboard=True, progress=True)
    )
    return c
