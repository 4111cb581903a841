"""Where a small Mirage loses quality on one held-out clip: VAE reconstruction, the DiT's one-step
prediction of the clean latents at several noise levels, and a whole chunk denoised by the samplers.

    python experiments/probe_denoise.py --weights weights/small [--world 0]
    # -> experiments/results/probe_denoise_small.json

Chunk 0 of a rollout with exact depth: the memory holds latent frame 0 written with the
renderer's depth and is read at the 9 latent cameras (control = readout || score latent), no
references, no preceding frames, the clip's caption. Every figure is the per-latent-frame PSNR
(pixel frames 0, 4, ..., 32) of the decoded latents against the rendered frames. If the denoised
chunk is no better than the one-step prediction from pure noise (sigma 1), the sampler is not the
limit: the model is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mirage_jax import memory, small  # noqa: E402
from mirage_jax.diffusion import FlowEuler, FlowUniPC, flow  # noqa: E402
from mirage_jax.eval.metrics import psnr  # noqa: E402
from mirage_jax.eval.suite import held_out_seed  # noqa: E402
from mirage_jax.generate.denoise import chunk_timesteps, denoise_chunk  # noqa: E402
from mirage_jax.models.mirage import score_latent  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="weights/small")
    ap.add_argument("--world", type=int, default=0, help="held-out world index (mirage_jax.eval.suite)")
    ap.add_argument("--out", default="experiments/results/probe_denoise_small.json")
    args = ap.parse_args(argv)
    bundle = small.load_bundle(args.weights)
    vae, model, hw = bundle.pipeline.vae, bundle.pipeline.model, tuple(bundle.config["train_config"]["data"]["image_hw"])
    clip = small.world_clip(held_out_seed(args.world), ml_collections.ConfigDict(bundle.config["train_config"]["data"]))
    frames = clip["frames"][:33]
    lat = vae.normalize(vae.encode(jnp.asarray(frames[None].astype(np.float32) / 127.5 - 1)))[0]  # [9, h, w, C]
    T, h, w, C = lat.shape
    K, c2w = jnp.asarray(clip["intrinsics"]), jnp.asarray(clip["cam2world"])  # per pixel frame
    mem = memory.empty(h * w, C, jnp.float32)
    mem = memory.write(mem, lat[0], jnp.asarray(clip["depth"][0]), K[0], c2w[0])
    out = memory.read_many(mem, K[0:33:4], c2w[0:33:4], hw, (h, w))
    control = jnp.concatenate([out.features, score_latent(vae, T, hw)], -1)[None]
    text = bundle.pipeline.encode_text([clip["caption"]])
    gt = frames[::4].astype(np.float32) / 255.0

    def frame_psnr(latents):
        video = jnp.clip(vae.decode(vae.denormalize(latents)[None])[0], -1, 1) * 0.5 + 0.5
        return [round(float(x), 2) for x in np.asarray(psnr(video[::4], gt, max_val=1.0))]

    report = dict(weights=args.weights, scene_seed=held_out_seed(args.world), readout_coverage=float(out.hit.mean()),
                  vae_reconstruction=frame_psnr(lat), latent_std=float(lat[1:].std()), one_step={}, sampled={})
    eps = jax.random.normal(jax.random.key(0), lat.shape)
    for s in (0.3, 0.6, 0.9, 1.0):
        sig = jnp.full((T,), s).at[0].set(0.0)
        xt = flow.add_noise(lat[None], eps[None], sig[None])
        v = model(xt, chunk_timesteps(flow.sigma_to_timestep(jnp.float32(s)), 0, T, 0)[None], text, control,
                  num_reference=0)
        report["one_step"][str(s)] = frame_psnr(flow.x0_from_velocity(xt, v, sig[None])[0])
    for name, sampler in (("unipc_20", FlowUniPC(num_steps=20)), ("euler_50", FlowEuler(num_steps=50))):
        z = denoise_chunk(model, sampler, eps[None], lat[:1], control, text)[0]
        report["sampled"][name] = dict(psnr=frame_psnr(z), latent_std=float(z[1:].std()))
    print(json.dumps(report, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
