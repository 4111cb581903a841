"""The explicit RGB-cache variant of the small Mirage, trained like ours (issue 10 section 4).

    python experiments/train_rgb_ablation.py --workdir runs/small --out runs/small_rgb_bundle [--scale 1.0]

The paper's "explicit" ablation: the same backbone and control branch, but the readout half of
the control input is VAE.encode(render of an RGB point cloud) (:mod:`mirage_jax.models.mirage.rgb_control`)
instead of the latent memory's readout. Everything else (references, preceding frames, score
latent, sampler) is the latent variant's. ``--workdir`` is the FINISHED small-model run of
experiments/train_small.py; its VAE, text encoder, pretrained backbone (``backbone_dit/``) and
depth model are reused, nothing of it is modified. Parts (each resumes when rerun; a finished
part is skipped), all under ``WORKDIR/rgb/`` with their own ``report.json``:

1. ``latents``: the training clips re-rendered with ``small.world_clip`` (same seeds and config
   as the latent run) and written as latent clip records WITH the record key ``rgb_control``
   (:class:`mirage_jax.data.latents.RGBControlEncoder`: per target start ``j``, frame ``4 j``'s
   RGB cloud rendered at the 33 target pixel cameras and at the preceding latents' cameras,
   VAE-encoded), train and held-out splits, into ``WORKDIR/rgb/latents``;
2. ``stage1`` (control branch from the latent run's backbone) and ``stage2`` (LoRA) through
   :class:`mirage_jax.train.Trainer` with ``sample.control_source = "rgb"``
   (configs/small.py ``trainer_config``), by default the SAME steps and learning rates the
   latent run recorded for its stage 1 and stage 2 (``--scale`` multiplies the steps; both are
   recorded in the report);
3. the bundle (``--out``, not committed): :func:`mirage_jax.small.save_bundle` with the latent
   run's VAE, depth model and text encoder; ``config.json`` holds ``"control_source": "rgb"``.
   Generate with it through ``RolloutConfig(memory_kind="rgb")``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_small", ROOT / "experiments" / "train_small.py")
train_small = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_small)  # the small model's driver: Run (parts, resume) is reused as is
small_cfg, small = train_small.small_cfg, train_small.small

PARTS = ("stage1", "stage2")
REQUIRED = ("vae", "backbone", "depth")  # parts of the latent run this driver reuses


def latent_run_settings(workdir: Path) -> dict:
    """The finished latent run's report; raises SystemExit naming what is missing."""
    path = workdir / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no small-model run here (run experiments/train_small.py --workdir {workdir} first)")
    report = json.loads(path.read_text())
    missing = [p for p in REQUIRED if not report.get("parts", {}).get(p, {}).get("done")]
    if missing:
        raise SystemExit(f"{workdir}: the small-model run has not finished {missing}; finish it first")
    for p in ("backbone_dit", "vae_final", "depth_final"):
        if not (workdir / p).is_dir():
            raise SystemExit(f"{workdir / p}: missing (the latent run's checkpoint this driver reuses)")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/small", help="the finished small-model run (read only)")
    ap.add_argument("--out", default="runs/small_rgb_bundle", help="the RGB variant's bundle directory")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the latent run's recorded stage 1 / stage 2 steps (1.0 = the same)")
    args = ap.parse_args(argv)
    workdir, out = Path(args.workdir), Path(args.out)
    latent = latent_run_settings(workdir)
    c = small_cfg.get_config()
    c.data.num_clips = int(latent.get("settings", {}).get("num_clips", c.data.num_clips))
    c.steps_scale = args.scale
    c.dit.control_source = "rgb"
    d = c.dit
    # the latent variant's stage settings (what its report recorded; the config's budget otherwise)
    budget = {p: dict(steps=latent["parts"].get(p, {}).get("steps", d[f"{p}_steps"]),
                      learning_rate=latent["parts"].get(p, {}).get("learning_rate", d[f"{p}_lr"])) for p in PARTS}

    base = train_small.Run(c, workdir, out)  # only loads the finished latent run's parts
    vae = base.vae()
    text_model, text = base.text_encoder()
    depth = base.depth()

    run = train_small.Run(c, workdir / "rgb", out)
    run.report["settings"] = {"scale": args.scale, "num_clips": c.data.num_clips, "control_source": "rgb",
                              "latent_run": str(workdir), "latent_run_stages": budget}
    train_small.held_out_seeds(c)
    t_start = time.perf_counter()
    from mirage_jax.data.latents import RGBControlEncoder

    rgb_control = RGBControlEncoder(vae, num_target=d.num_target, max_preceding=d.max_preceding)
    data, consts = run.latents(vae, text, rgb_control)
    run.dit_part("stage1", 1, run.steps(budget["stage1"]["steps"], "stage1"), budget["stage1"]["learning_rate"], data,
                 consts, init_backbone=str((workdir / "backbone_dit").absolute()))
    trainer = run.dit_part("stage2", 2, run.steps(budget["stage2"]["steps"], "stage2"),
                           budget["stage2"]["learning_rate"], data, consts,
                           init_from=str((workdir / "rgb" / "stage1").absolute()))
    run.report["seconds_this_invocation"] = time.perf_counter() - t_start
    run.report["seconds_total"] = sum(p.get("seconds", 0.0) for p in run.report["parts"].values())
    cfg = small.save_bundle(out, vae=vae, model=trainer.state.model, depth=depth, text_encoder=text_model,
                            text_max_length=c.text.max_length,
                            extra={"control_source": "rgb", "train_config": c.to_dict(),
                                   "held_out_seeds": list(train_small.held_out_seeds(c)),
                                   "train_seeds": [c.data.seed_offset, c.data.seed_offset + c.data.num_clips],
                                   "latent_run": str(workdir)})
    run.report["params"] = cfg["params"]
    run.report_path.write_text(json.dumps(run.report, indent=1))
    (out / "report.json").write_text(json.dumps(run.report, indent=1))
    print(json.dumps({"control_source": "rgb", "params": cfg["params"], "seconds_total": run.report["seconds_total"],
                      **{k: {m: v for m, v in p.items() if m in ("steps", "final_loss", "heldout_flow_loss", "seconds")}
                         for k, p in run.report["parts"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
