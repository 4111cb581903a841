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
   run's VAE, depth model and text encoder; ``config.json`` holds ``"control_source": "rgb"``, so
   its pipeline rolls out with the RGB cache (``Pipeline.control_source``).

A controlled comparison at a smaller budget (what the session that resolved issue 10 ran): both
variants' stage 1 only, the same steps from the same backbone, data order and seed::

    python experiments/train_rgb_ablation.py --stages 1 --stage1-steps 500 --control-source rgb
    python experiments/train_rgb_ablation.py --stages 1 --stage1-steps 500 --control-source latent

(``--control-source latent`` trains the latent twin on the latent run's own records under
``WORKDIR/ablation_latent_s1_500``; the RGB one lives under ``WORKDIR/ablation_rgb_s1_500``.)
Only the VAE and the backbone of the latent run must be finished to train; the bundle also needs
its depth model and is written once that exists (rerun the command: finished parts are skipped).
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
REQUIRED = ("vae", "backbone")  # parts of the latent run this driver trains from (depth: for the bundle)


def latent_run_settings(workdir: Path, required=REQUIRED, wait: bool = False) -> dict:
    """The latent run's report once ``required`` parts are done; raises SystemExit naming what is
    missing (``wait``: polls every 30 s instead, for a latent run still training)."""
    path = workdir / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no small-model run here (run experiments/train_small.py --workdir {workdir} first)")
    while True:
        report = json.loads(path.read_text())
        missing = [p for p in required if not report.get("parts", {}).get(p, {}).get("done")]
        if not missing:
            break
        if not wait:
            raise SystemExit(f"{workdir}: the small-model run has not finished {missing}; finish it first")
        time.sleep(30)
    for p in ("backbone_dit", "vae_final") if "backbone" in required else ("vae_final",):
        if not (workdir / p).is_dir():
            raise SystemExit(f"{workdir / p}: missing (the latent run's checkpoint this driver reuses)")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/small", help="the finished small-model run (read only)")
    ap.add_argument("--out", default="runs/small_rgb_bundle", help="the RGB variant's bundle directory")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the latent run's recorded stage 1 / stage 2 steps (1.0 = the same)")
    ap.add_argument("--control-source", choices=("rgb", "latent"), default="rgb",
                    help="rgb: the explicit variant; latent: its twin trained the same way (controlled comparison)")
    ap.add_argument("--stages", type=int, choices=(1, 2), default=2, help="1: stage 1 only (the bundle has no LoRA)")
    ap.add_argument("--stage1-steps", type=int, default=None, help="stage 1 steps (default: the latent run's)")
    ap.add_argument("--wait", action="store_true",
                    help="start from a latent run whose VAE is trained (its records are written first) and wait "
                         "for its backbone before training")
    args = ap.parse_args(argv)
    workdir, out = Path(args.workdir), Path(args.out)
    source = args.control_source
    full = args.stages == 2 and args.stage1_steps is None
    sub = "rgb" if full and source == "rgb" else f"ablation_{source}_s{args.stages}_{args.stage1_steps or 'run'}"
    if out == Path(ap.get_default("out")) and not (full and source == "rgb"):
        out = Path(f"runs/small_{sub}_bundle")
    latent = latent_run_settings(workdir, ("vae",) if args.wait else REQUIRED, wait=args.wait)
    c = small_cfg.get_config()
    c.data.num_clips = int(latent.get("settings", {}).get("num_clips", c.data.num_clips))
    c.steps_scale = args.scale
    c.dit.control_source = source
    d = c.dit
    # the latent variant's stage settings (what its report recorded; the config's budget otherwise)
    budget = {p: dict(steps=latent["parts"].get(p, {}).get("steps", d[f"{p}_steps"]),
                      learning_rate=latent["parts"].get(p, {}).get("learning_rate", d[f"{p}_lr"])) for p in PARTS}

    base = train_small.Run(c, workdir, out)  # only loads the finished latent run's parts
    vae = base.vae()
    text_model, text = base.text_encoder()
    if args.stage1_steps is not None:
        budget["stage1"]["steps"] = int(args.stage1_steps)

    run = train_small.Run(c, workdir / sub, out)
    run.report["settings"] = {"scale": args.scale, "num_clips": c.data.num_clips, "control_source": source,
                              "stages": args.stages, "latent_run": str(workdir), "latent_run_stages": budget}
    train_small.held_out_seeds(c)
    t_start = time.perf_counter()
    from mirage_jax.data.latents import RGBControlEncoder

    if source == "rgb":  # its records first: they need only the VAE (the latent run may still be training)
        data, consts = run.latents(vae, text, RGBControlEncoder(vae, num_target=d.num_target,
                                                                 max_preceding=d.max_preceding))
    # the latent run's report as it is now (its backbone done): `base` must never write back a copy
    # read before a wait
    base.report = latent_run_settings(workdir, wait=args.wait)
    if source == "latent":  # the twin trains on the latent run's own records
        data, consts = base.latents(vae, text)
    trainer = run.dit_part("stage1", 1, run.steps(budget["stage1"]["steps"], "stage1"),
                           budget["stage1"]["learning_rate"], data, consts, need_model=args.stages == 1,
                           init_backbone=str((workdir / "backbone_dit").absolute()))
    if args.stages == 2:
        trainer = run.dit_part("stage2", 2, run.steps(budget["stage2"]["steps"], "stage2"),
                               budget["stage2"]["learning_rate"], data, consts, need_model=True,
                               init_from=str((workdir / sub / "stage1").absolute()))
    base.report = latent_run_settings(workdir)
    if not base.done("depth"):
        print(f"trained; the bundle needs the latent run's depth model ({workdir / 'depth_final'}): "
              "rerun this command once experiments/train_small.py has finished")
        return 0
    depth = base.depth()
    run.report["seconds_this_invocation"] = time.perf_counter() - t_start
    run.report["seconds_total"] = sum(p.get("seconds", 0.0) for p in run.report["parts"].values())
    cfg = small.save_bundle(out, vae=vae, model=trainer.state.model, depth=depth, text_encoder=text_model,
                            text_max_length=c.text.max_length,
                            extra={"control_source": source, "train_config": c.to_dict(),
                                   "held_out_seeds": list(train_small.held_out_seeds(c)),
                                   "train_seeds": [c.data.seed_offset, c.data.seed_offset + c.data.num_clips],
                                   "latent_run": str(workdir)})
    run.report["params"] = cfg["params"]
    run.report_path.write_text(json.dumps(run.report, indent=1))
    (out / "report.json").write_text(json.dumps(run.report, indent=1))
    print(json.dumps({"control_source": source, "params": cfg["params"], "seconds_total": run.report["seconds_total"],
                      **{k: {m: v for m, v in p.items() if m in ("steps", "final_loss", "heldout_flow_loss", "seconds")}
                         for k, p in run.report["parts"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
