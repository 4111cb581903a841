"""``make train-small``: the whole small Mirage from nothing, on CPU, resumable (issue 10 section 1).

    python experiments/train_small.py --workdir runs/small --out weights/small [--scale 1.0]

Parts, in order (each resumes exactly from its checkpoints when the command is rerun with the
same ``--workdir``; a finished part is skipped):

1. ``worlds``: render the training clips (scene seeds [seed_offset, seed_offset + num_clips),
   disjoint from the held-out worlds) with :mod:`mirage_jax.data.worlds`;
2. ``vae``: train the small Wan VAE (L1 reconstruction + a small KL) on random crops of single
   frames, then of 9-frame clips (warm-up + cosine learning rate), then measure its latent
   statistics (``latents_mean`` / ``latents_std``);
3. ``latents``: encode every clip with it (:func:`mirage_jax.data.latents.preprocess`) with the
   frozen tiny umT5 captions, plus the score latent and the empty prompt's embedding;
4. ``backbone``: pretrain the WanDiT as a plain video model through :class:`mirage_jax.train.Trainer`
   (its parameters trainable, the control branch silent: its zero-initialised after_proj is
   not trained); the small model's stand-in for the pretrained Wan backbone;
5. ``stage1`` (control branch) and ``stage2`` (LoRA): ``mirage_jax.train`` as for the 5B;
6. ``depth``: the U-Net depth model on the renderer's exact depth;
7. the bundle (``--out``): checkpoints, config.json, report.json, MODEL_CARD.md.

``--scale`` multiplies every step count (1.0 = the full budget of configs/small.py); the report
and the model card record it. Held-out numbers use scene seeds outside the training range.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from configs import small as small_cfg  # noqa: E402
from mirage_jax import small  # noqa: E402

HELD_OUT_WORLDS = (0, 1)  # indices of mirage_jax.eval.suite's held-out worlds used for the report's metrics


def held_out_seeds(c) -> tuple[int, ...]:
    """The report's held-out scene seeds (mirage_jax.eval.suite's reserved range); raises if a
    training seed falls in that range."""
    from mirage_jax.eval.suite import HELD_OUT_SEEDS, held_out_seed

    lo, hi = c.data.seed_offset, c.data.seed_offset + c.data.num_clips
    if lo < HELD_OUT_SEEDS.stop and HELD_OUT_SEEDS.start < hi:
        raise ValueError(f"training seeds [{lo}, {hi}) overlap the held-out seeds {HELD_OUT_SEEDS}")
    return tuple(held_out_seed(i) for i in HELD_OUT_WORLDS)


# ---------------------------------------------------------------------------------------------
# A resumable loop for the parts trained outside mirage_jax.train (VAE, depth)
# ---------------------------------------------------------------------------------------------


class LoopCheckpoint:
    """Model parameters + optimizer state + step in an orbax CheckpointManager (keep 2). The
    batches and keys of step ``s`` depend only on ``s``, so a restore resumes exactly."""

    def __init__(self, directory: Path, every: int):
        self.manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2))
        self.every = every

    def restore(self, model, opt) -> int:
        step = self.manager.latest_step()
        if step is None:
            return 0
        target = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": nnx.to_pure_dict(nnx.state(opt))}
        got = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        nnx.update(model, _replace(nnx.state(model, nnx.Param), got["model"]))
        nnx.update(opt, _replace(nnx.state(opt), got["opt"]))
        return int(step)

    def save(self, step: int, model, opt, force: bool = False) -> None:
        if force or step % self.every == 0:
            tree = {"model": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "opt": nnx.to_pure_dict(nnx.state(opt))}
            self.manager.save(step, args=ocp.args.StandardSave(tree), force=force)
            self.manager.wait_until_finished()


def _replace(state, pure):
    nnx.replace_by_pure_dict(state, pure)
    return state


def train_loop(name, model, tx, loss_fn, batch_fn, steps, ckpt: LoopCheckpoint, log: list) -> None:
    """Trains ``model`` for ``steps`` with ``loss_fn(model, batch, key)``; ``batch_fn(step)``."""
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    start = ckpt.restore(model, opt)

    @nnx.jit
    def step_fn(model, opt, batch, key):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, batch, key))(model)
        opt.update(model, grads)
        return loss

    bar = tqdm(total=steps, initial=start, desc=name, dynamic_ncols=True)
    window = []
    for step in range(start, steps):
        loss = step_fn(model, opt, batch_fn(step), jax.random.fold_in(jax.random.key(0), step))
        window.append(loss)
        bar.update(1)
        if (step + 1) % 10 == 0 or step + 1 == steps:
            value = float(np.mean(jax.device_get(window)))
            window = []
            log.append({"step": step + 1, "loss": value})
            bar.set_postfix(loss=f"{value:.4f}")
        ckpt.save(step + 1, model, opt, force=step + 1 == steps)
    bar.close()


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


class Run:
    def __init__(self, config, workdir: Path, out: Path):
        self.c, self.workdir, self.out = config, workdir, out
        workdir.mkdir(parents=True, exist_ok=True)
        self.report_path = workdir / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.exists() else {"parts": {}}
        self._clips = None
        self.part_scale: dict[str, float] = {}

    def steps(self, n: int, part: str) -> int:
        scale = float(self.part_scale.get(part, self.c.steps_scale))
        return max(1, int(round(n * scale)))

    def done(self, part: str) -> bool:
        return bool(self.report["parts"].get(part, {}).get("done"))

    def record(self, part: str, seconds: float, **values) -> None:
        entry = self.report["parts"].setdefault(part, {"seconds": 0.0})
        entry["seconds"] = entry.get("seconds", 0.0) + seconds
        entry.update(values)
        self.report_path.write_text(json.dumps(self.report, indent=1))

    @property
    def clips(self) -> list[dict]:
        if self._clips is None:
            t0 = time.perf_counter()
            d = self.c.data
            seeds = range(d.seed_offset, d.seed_offset + d.num_clips)
            self._clips = [small.world_clip(s, d) for s in tqdm(seeds, desc="worlds", dynamic_ncols=True)]
            self.record("worlds", time.perf_counter() - t0, clips=len(self._clips), seeds=[seeds.start, seeds.stop],
                        frames=int(d.num_frames), image_hw=list(d.image_hw), done=True)
        return self._clips

    # -- VAE -----------------------------------------------------------------------------------
    def vae(self):
        from mirage_jax.checkpoint import restore_model, save_model
        from mirage_jax.models.wan.vae import WanVAE, WanVAEConfig

        final = self.workdir / "vae_final"
        if self.done("vae"):
            stored = self.report["parts"]["vae"]["config"]
            cfg = WanVAEConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in stored.items()})
            return restore_model(final, WanVAE(cfg, rngs=nnx.Rngs(0)))
        v = self.c.vae
        t0 = time.perf_counter()
        vae = WanVAE(small_cfg.vae_config(), rngs=nnx.Rngs(self.c.seed))
        clips = self.clips

        image_steps, video_steps = self.steps(v.image_steps, "vae"), self.steps(v.steps, "vae")

        def batch_fn(step):
            # steps [0, image_steps): single frames (the causal VAE encodes frame 0 alone: this trains
            # the spatial path at ~1/5 of a 9-frame step's cost); then 9-frame clips (temporal path)
            rng = np.random.default_rng([self.c.seed, 1, step])
            frames, batch = (1, v.image_batch_size) if step < image_steps else (v.frames, v.batch_size)
            out = []
            for _ in range(batch):
                clip = clips[rng.integers(len(clips))]["frames"]
                t = rng.integers(clip.shape[0] - frames + 1)
                y, x = rng.integers(clip.shape[1] - v.crop + 1), rng.integers(clip.shape[2] - v.crop + 1)
                out.append(clip[t : t + frames, y : y + v.crop, x : x + v.crop])
            return jnp.asarray(np.stack(out).astype(np.float32) / 127.5 - 1.0)

        def loss_fn(vae, x, key):
            mean, logvar = vae.encode_dist(x)
            y = vae.decode(vae.sample(mean, logvar, key), clamp=False)
            kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
            return jnp.mean(jnp.abs(y - x)) + v.kl_weight * kl

        log: list = []
        steps = image_steps + video_steps
        lr = optax.warmup_cosine_decay_schedule(0.0, v.learning_rate, min(50, steps // 2), steps, v.learning_rate * 0.05)
        train_loop("vae", vae, optax.adamw(lr, weight_decay=0.0), loss_fn, batch_fn, steps,
                   LoopCheckpoint(self.workdir / "vae", v.checkpoint_every), log)
        # latent statistics -> the config's latents_mean / latents_std (what normalize() uses)
        enc = nnx.jit(lambda m, x: m.encode(x))
        lat = np.concatenate([np.asarray(enc(vae, jnp.asarray(c["frames"][None, :17].astype(np.float32) / 127.5 - 1)))
                              .reshape(-1, vae.config.z_dim) for c in clips[:8]])
        cfg = dataclasses.replace(vae.config, latents_mean=tuple(float(x) for x in lat.mean(0)),
                                  latents_std=tuple(float(x) for x in lat.std(0) + 1e-6))
        trained = WanVAE(cfg, rngs=nnx.Rngs(0))
        nnx.update(trained, nnx.state(vae, nnx.Param))
        save_model(final, trained, force=True)
        psnr = self._vae_heldout(trained)
        self.record("vae", time.perf_counter() - t0, steps=steps, image_steps=image_steps,
                    final_loss=log[-1]["loss"] if log else None,
                    loss_log=log[:: max(1, len(log) // 50)], heldout_recon_psnr=psnr,
                    config=json.loads(json.dumps(dataclasses.asdict(cfg))), done=True)
        return trained

    def _vae_heldout(self, vae) -> float:
        from mirage_jax.eval.metrics import psnr

        fn = nnx.jit(lambda m, x: m.decode(m.encode(x)))
        vals = []
        for s in held_out_seeds(self.c):
            frames = small.world_clip(s, self.c.data)["frames"][:17]
            x = jnp.asarray(frames[None].astype(np.float32) / 127.5 - 1)
            vals.append(float(jnp.mean(psnr(fn(vae, x)[0] * 0.5 + 0.5, x[0] * 0.5 + 0.5, max_val=1.0))))
        return float(np.mean(vals))

    # -- text encoder and latents ----------------------------------------------------------------
    def text_encoder(self):
        from mirage_jax.models.umt5 import UMT5Encoder

        enc = UMT5Encoder(small_cfg.text_config(), rngs=nnx.Rngs(self.c.text.seed))
        return enc, small.ByteTextEncoder(enc, self.c.text.max_length)

    def latents(self, vae, text, rgb_control=None):
        """Train and held-out latent clip records (+ ``rgb_control`` for the explicit variant)."""
        from mirage_jax.data.latents import LatentEncoder, preprocess
        from mirage_jax.models.mirage import score_latent

        path = self.workdir / "latents"
        consts = self.workdir / "score.npy", self.workdir / "empty_text.npy"
        if self.done("latents"):
            return path, consts
        t0 = time.perf_counter()
        d = self.c.dit
        np.save(consts[0], np.asarray(score_latent(vae, d.num_target + d.max_preceding, tuple(self.c.data.image_hw))))
        np.save(consts[1], text([""])[0])
        # one clip per call on one device (the clips are few and small; no padding copies)
        encoder = LatentEncoder(vae, mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), batch_size=1)
        entry = preprocess(self.clips, path, encoder=encoder, text_encoder=text, split="train", clips_per_shard=16,
                           settings={"worlds": "configs/small.py", "num_clips": self.c.data.num_clips}, progress=True,
                           rgb_control=rgb_control)
        held = [small.world_clip(s, self.c.data) for s in held_out_seeds(self.c)]
        preprocess(held, path, encoder=encoder, text_encoder=text, split="test", clips_per_shard=16,
                   settings={"worlds": "held-out", "seeds": list(held_out_seeds(self.c))}, rgb_control=rgb_control)
        self.record("latents", time.perf_counter() - t0, records=sum(s["records"] for s in entry["shards"].values()),
                    done=True)
        return path, consts

    # -- DiT parts through mirage_jax.train --------------------------------------------------------
    def dit_part(self, part: str, stage: int, steps: int, lr: float, data, consts, *, need_model: bool = False,
                 **init):
        from mirage_jax.train.trainer import Trainer

        d = self.c.dit
        workdir = self.workdir / part
        if self.done(part) and not need_model:  # a finished part is restored only when its model is needed
            return None
        cfg = small_cfg.trainer_config(self.c, stage, workdir=str(workdir), steps=steps, learning_rate=lr,
                                       data_path=str(data), score_path=str(consts[0]), empty_text_path=str(consts[1]),
                                       **init)
        trainable = nnx.All(nnx.Param, nnx.PathContains("dit")) if part == "backbone" else None
        t0 = time.perf_counter()
        trainer = Trainer(cfg, trainable=trainable)
        try:
            last = trainer.run()
        finally:
            trainer.close()
        if self.done(part):
            return trainer
        if part == "backbone":  # stage 1's init_backbone: an orbax WanDiT directory
            from mirage_jax.checkpoint import save_model

            save_model(self.workdir / "backbone_dit", trainer.state.model.dit, force=True)
        log = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        held = self._dit_heldout(trainer, data, consts)
        self.record(part, time.perf_counter() - t0, steps=steps, learning_rate=lr, final_loss=last.get("loss"),
                    loss_log=[{"step": m["step"], "loss": m["loss"]} for m in log if "loss" in m][:: max(1, len(log) // 50)],
                    heldout_flow_loss=held, batch_size=d.batch_size, done=True)
        return trainer

    def _dit_heldout(self, trainer, data, consts) -> float:
        """Flow-matching loss on the held-out worlds' latents (fixed key, every sample averaged)."""
        from mirage_jax.data.latents import open_latent_clips
        from mirage_jax.train.step import flow_loss

        cfg = trainer.run_config.sample
        src = open_latent_clips(data, "test")
        batch = {k: jnp.stack([jnp.asarray(src[i][k], jnp.float32) for i in range(len(src))]) for k in cfg.clip_keys}
        batch["exclude"] = batch["exclude"].astype(bool)
        model = trainer.state.model
        score, empty = jnp.asarray(np.load(consts[0])), jnp.asarray(np.load(consts[1]))
        fn = nnx.jit(lambda m, b, k: flow_loss(m, b, score, empty, k, cfg, train=False)[0])
        return float(np.mean([float(fn(model, batch, jax.random.key(100 + i))) for i in range(4)]))

    # -- depth ---------------------------------------------------------------------------------------
    def depth(self):
        from mirage_jax.checkpoint import restore_model, save_model
        from mirage_jax.models.depth import DepthNet, abs_rel, depth_loss

        final = self.workdir / "depth_final"
        if self.done("depth"):
            return restore_model(final, DepthNet(small_cfg.depth_config(), rngs=nnx.Rngs(0)))
        p = self.c.depth
        t0 = time.perf_counter()
        net = DepthNet(small_cfg.depth_config(), rngs=nnx.Rngs(self.c.seed))
        clips = self.clips

        def batch_fn(step):
            rng = np.random.default_rng([self.c.seed, 2, step])
            idx = [(rng.integers(len(clips)), rng.integers(clips[0]["frames"].shape[0])) for _ in range(p.batch_size)]
            img = np.stack([clips[i]["frames"][t] for i, t in idx]).astype(np.float32) / 255.0
            dep = np.stack([clips[i]["depth"][t] for i, t in idx]).astype(np.float32)
            return jnp.asarray(img), jnp.asarray(dep)

        log: list = []
        steps = self.steps(p.steps, "depth")
        train_loop("depth", net, optax.adamw(p.learning_rate, weight_decay=0.0),
                   lambda m, b, k: depth_loss(m, *b), batch_fn, steps,
                   LoopCheckpoint(self.workdir / "depth", p.checkpoint_every), log)
        save_model(final, net, force=True)
        fn = nnx.jit(lambda m, x: m(x))
        rels = []
        for s in held_out_seeds(self.c):
            clip = small.world_clip(s, self.c.data)
            pred = fn(net, jnp.asarray(clip["frames"][::4].astype(np.float32) / 255.0))
            rels.append(np.asarray(abs_rel(pred, clip["depth"][::4])))
        self.record("depth", time.perf_counter() - t0, steps=steps, final_loss=log[-1]["loss"] if log else None,
                    loss_log=log[:: max(1, len(log) // 50)], heldout_abs_rel=float(np.mean(np.concatenate(rels))),
                    done=True)
        return net


def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def write_model_card(out: Path, report: dict, cfg: dict, c) -> None:
    """MODEL_CARD.md of the bundle: data, configs, steps, metrics, wall time, the command."""
    parts = report["parts"]
    scale = report["settings"]["scale"]
    full = small_cfg.get_config()
    rows = [
        ("vae", full.vae.image_steps + full.vae.steps, "L1 + KL recon (single frames, then 9-frame clips)", f"held-out recon PSNR {_fmt(parts['vae'].get('heldout_recon_psnr'), '.2f')} dB"),
        ("backbone", full.dit.backbone_steps, "flow matching", f"held-out flow loss {_fmt(parts['backbone'].get('heldout_flow_loss'))}"),
        ("stage1", full.dit.stage1_steps, "flow matching", f"held-out flow loss {_fmt(parts['stage1'].get('heldout_flow_loss'))}"),
        ("stage2", full.dit.stage2_steps, "flow matching", f"held-out flow loss {_fmt(parts['stage2'].get('heldout_flow_loss'))}"),
        ("depth", full.depth.steps, "L1 log-depth", f"held-out AbsRel {_fmt(parts['depth'].get('heldout_abs_rel'))}"),
    ]
    lines = [
        "# Small Mirage trained on procedural worlds (mirage_jax)",
        "",
        "Trained from nothing by one command on a 2-core CPU (issue 10):",
        "",
        "    make train-small      # = python experiments/train_small.py --workdir runs/small --out weights/small",
        "",
    ]
    part_scale = report["settings"].get("part_scale") or {}
    clips = "" if c.data.num_clips == full.data.num_clips else f" `--clips {c.data.num_clips}`"
    if scale != 1.0 or clips or any(v != 1.0 for v in part_scale.values()):
        lines += [
            f"**These weights are a REDUCED-BUDGET run** (`--scale {scale:g}`{clips}"
            + "".join(f" `--part-scale {k}={v:g}`" for k, v in part_scale.items())
            + f"; the full budget trains on {full.data.num_clips} worlds): each part ran the fraction of the full budget's steps shown in the table below, to fit the",
            "session that produced them on a CPU shared with other jobs. The command above (scale 1.0) is the full",
            "budget; rerunning it with the same `--workdir` continues these runs to the full step counts.",
            "",
        ]
    lines += [
        "## Data",
        f"- {c.data.num_clips} indoor worlds of `mirage_jax.data.worlds` (scene seeds [{cfg['train_seeds'][0]}, "
        f"{cfg['train_seeds'][1]}), trajectories {', '.join(c.data.trajectories)} alternating), {c.data.num_frames} frames "
        f"of {c.data.image_hw[0]} x {c.data.image_hw[1]} at {c.data.fps} fps, fov {c.data.fov_deg} deg; exact depth and poses.",
        f"- Held-out worlds (metrics below; the demo uses `mirage_jax.eval.suite.held_out_seed(2)`): seeds {cfg['held_out_seeds']}, outside the training range.",
        "- Captions from `mirage_jax.data.worlds.caption` (scene description).",
        "",
        "## Parts and parameters",
        f"- VAE: Wan VAE (`WanVAEConfig`, 2x2 patchify, dim_mult {tuple(cfg['vae']['dim_mult'])}, "
        f"{'residual (Wan2.2) blocks, ' if cfg['vae']['is_residual'] else ''}z {cfg['vae']['z_dim']}: 8x spatial, 4x temporal; "
        f"{cfg['params']['vae']:,} parameters), latents_mean / latents_std measured after training.",
        f"- Mirage: WanDiT width {cfg['mirage']['dit']['num_attention_heads'] * cfg['mirage']['dit']['attention_head_dim']}, "
        f"{cfg['mirage']['dit']['num_layers']} layers, patch {tuple(cfg['mirage']['dit']['patch_size'])}, control branch on "
        f"layers {tuple(cfg['mirage']['control_layers'])}, LoRA rank {cfg['mirage']['lora_rank']} ({cfg['params']['mirage']:,} parameters).",
        f"- Text encoder: umT5 `UMT5Config.tiny()`, random weights (seed {c.text.seed}), frozen, UTF-8 bytes as tokens "
        f"({cfg['params']['text_encoder']:,} parameters). A PLACEHOLDER-scale encoder: it gives caption-dependent "
        "embeddings but no language understanding.",
        f"- Depth: U-Net (`mirage_jax.models.depth`, {cfg['params']['depth']:,} parameters) predicting log z-depth.",
        f"- Parameters (total): {cfg['params']['total']}",
        "",
        "## Training (steps: this run / full budget) and held-out metrics",
        "| part | steps run | full budget | loss | final train loss | held-out | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, budget, loss, held in rows:
        p = parts.get(name, {})
        lines.append(f"| {name} | {p.get('steps', '-')} | {budget} | {loss} | {_fmt(p.get('final_loss'))} | {held} | "
                     f"{_fmt(p.get('seconds'), '.0f')} |")
    lines += [
        f"| worlds + latents | | | | | | {_fmt(parts['worlds'].get('seconds', 0) + parts['latents'].get('seconds', 0), '.0f')} |",
        "",
        f"Total wall time: {report['seconds_total']:.0f} s. Backbone, stage 1 (control branch) and stage 2 (LoRA) run "
        "through `mirage_jax.train.Trainer` (configs/small.py `trainer_config`, the sections of configs/train_5b.py); "
        "AdamW, linear warm-up then cosine decay, clip 1.0, batch "
        f"{c.dit.batch_size}, 9 target + up to 2 preceding + up to 2 reference latent frames per sample.",
        "",
        "Full numbers (loss curves, per-part settings): report.json. Generate with `make demo`. The held-out",
        "suite (`mirage-jax evaluate --checkpoint weights/small --kinds indoor --chunks 3`) and the ablations",
        "(`make ablations`) of these weights: experiments/results/eval_small/ and experiments/results/ablations_small_*.md.",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/small", help="checkpoints and intermediate data (resumable)")
    ap.add_argument("--out", default="weights/small", help="the bundle directory")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (1.0 = full budget)")
    ap.add_argument("--clips", type=int, default=None, help="override data.num_clips (default: configs/small.py)")
    ap.add_argument("--part-scale", action="append", default=[], metavar="PART=SCALE",
                    help="a step scale for one part (vae, backbone, stage1, stage2, depth) instead of --scale")
    args = ap.parse_args(argv)
    c = small_cfg.get_config()
    c.steps_scale = args.scale
    if args.clips is not None:
        c.data.num_clips = args.clips
    workdir, out = Path(args.workdir), Path(args.out)
    run = Run(c, workdir, out)
    for item in args.part_scale:
        part, _, value = item.partition("=")
        if part not in ("vae", "backbone", "stage1", "stage2", "depth"):
            raise SystemExit(f"--part-scale {item!r}: unknown part {part!r}")
        run.part_scale[part] = float(value)
    stored = run.report.get("settings", {}).get("num_clips")
    if stored is not None and stored != c.data.num_clips:
        raise SystemExit(f"{workdir} was started with {stored} clips; rerun with the same --clips or another --workdir")
    # the step scale may change between invocations (each part records the steps it ran)
    run.report["settings"] = {"scale": args.scale, "num_clips": c.data.num_clips, "part_scale": run.part_scale}
    held_out_seeds(c)
    t_start = time.perf_counter()
    vae = run.vae()
    text_model, text = run.text_encoder()
    data, consts = run.latents(vae, text)
    d = c.dit
    run.dit_part("backbone", 1, run.steps(d.backbone_steps, "backbone"), d.backbone_lr, data, consts)
    run.dit_part("stage1", 1, run.steps(d.stage1_steps, "stage1"), d.stage1_lr, data, consts,
                 init_backbone=str((workdir / "backbone_dit").absolute()))
    trainer = run.dit_part("stage2", 2, run.steps(d.stage2_steps, "stage2"), d.stage2_lr, data, consts,
                           need_model=True, init_from=str((workdir / "stage1").absolute()))
    depth = run.depth()
    run.report["seconds_this_invocation"] = time.perf_counter() - t_start
    run.report["seconds_total"] = sum(p.get("seconds", 0.0) for p in run.report["parts"].values())
    cfg = small.save_bundle(out, vae=vae, model=trainer.state.model, depth=depth, text_encoder=text_model,
                            text_max_length=c.text.max_length,
                            extra={"train_config": c.to_dict(), "held_out_seeds": list(held_out_seeds(c)),
                                   "train_seeds": [c.data.seed_offset, c.data.seed_offset + c.data.num_clips]})
    run.report["params"] = cfg["params"]
    run.report_path.write_text(json.dumps(run.report, indent=1))
    (out / "report.json").write_text(json.dumps(run.report, indent=1))
    write_model_card(out, run.report, cfg, c)
    print(json.dumps({"params": cfg["params"], "seconds_total": run.report["seconds_total"],
                      **{k: {m: v for m, v in p.items() if m in ("final_loss", "heldout_flow_loss", "heldout_abs_rel",
                                                              "heldout_recon_psnr", "seconds")}
                         for k, p in run.report["parts"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
