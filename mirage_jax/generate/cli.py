"""``mirage-jax generate``: one image (or a reference geometry.npz), a camera path and a prompt in;
a video, its frames, the memory and metadata out (see :mod:`mirage_jax.generate.outputs`).

    mirage-jax generate --geometry scene/geometry.npz --chunks 3 --prompt "a kitchen" \\
        --checkpoint random:tiny --out out/
    mirage-jax generate --image room.png --trajectory orbit_left --depth file --depth-file d.npz ...

Inputs: ``--image PATH`` (intrinsics from ``--fov``) or ``--geometry geometry.npz`` (the
reference's inference input: frames or first_frame.png / clip.mp4 next to it, depths,
intrinsics, poses; its poses are the default camera path). ``--trajectory`` is a preset name
(spec 2 vocabulary; ``--loop`` for out-and-back) or a camera file: RealEstate10K ``.txt``,
WorldScore ``camera_data.json``, nerfstudio ``transforms.json``, a Spatia folder (w2c.txt +
intrinsics.txt) or a ``geometry.npz``. Depth for the written frames: ``gt`` (the geometry
file's), ``file`` (``--depth-file``: a .npy [T, H, W] or an .npz with ``depths``) or ``model``
(``--depth-model module:function``, a JAX ``fn(images [n, H, W, 3] in [0, 1], K [n, 3, 3]) ->
[n, H, W]``).

Every input is checked before any model is built or run: a bad one prints one line
``mirage-jax generate: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from mirage_jax.errors import MirageError

__all__ = ["main", "prepare"]


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mirage-jax generate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="first frame (PNG / JPEG); size divisible by 16 (x the DiT patch)")
    src.add_argument("--geometry", help="the reference's geometry.npz (first frame, depths, intrinsics, poses)")
    p.add_argument("--trajectory", help="preset name or camera file (default with --geometry: its poses)")
    p.add_argument("--loop", action="store_true", help="presets: go out and come back")
    p.add_argument("--chunks", type=int, default=1, help="chunks N; the video has 33 + 32 (N - 1) frames")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--checkpoint", required=True, help="model checkpoint ('random:tiny' for random tiny models)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--depth", choices=("gt", "model", "file"), default=None,
                   help="depth of generated frames (default: gt with --geometry)")
    p.add_argument("--depth-file", help="--depth file: .npy [T, H, W] or .npz with 'depths'")
    p.add_argument("--depth-model", help="--depth model: module:function returning a JAX depth function")
    p.add_argument("--masks", action="store_true", help="exclude the geometry file's non-static pixels on writes")
    p.add_argument("--fov", type=float, default=60.0, help="--image: horizontal field of view in degrees")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=20, help="sampler steps (flow UniPC)")
    p.add_argument("--sampler", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--memory-capacity", type=int, default=None, help="memory slots (default: unbounded)")
    p.add_argument("--memory-policy", choices=("ring", "fuse"), default="ring")
    p.add_argument("--no-rewrite-first-frame", action="store_true", help="do not re-add frame 0 in chunk 0")
    p.add_argument("--tiled-decode", action="store_true")
    p.add_argument("--worldscore", action="store_true", help="also write the WorldScore instance layout")
    p.add_argument("--no-gif", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _fail(msg: str):
    raise _UsageError(msg)


def _read_image(path) -> np.ndarray:
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        _fail(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        _fail(f"--image {path}: not a readable image ({e})")


def _first_frame_of(geo, path) -> np.ndarray:
    if geo.frames is not None:
        return geo.frames[0]
    if geo.sidecar is None:
        _fail(f"--geometry {path}: no frames in the file and no first_frame.png / clip.mp4 next to it")
    if geo.sidecar.endswith(".png"):
        return _read_image(geo.sidecar)
    from mirage_jax.data.vipe import read_video

    return read_video(geo.sidecar)[0]


def _camera_file(path: Path, image_hw):
    """(cam2world [T, 4, 4], intrinsics [T, 3, 3] or None) from a supported camera file."""
    from mirage_jax import geometry as g

    if path.is_dir():
        n, c2w = g.read_spatia(path)
        return c2w, g.denormalize_intrinsics(n, image_hw)
    if path.suffix == ".npz":
        geo = g.read_geometry_npz(path)
        return geo.poses_c2w, None
    if path.suffix == ".txt":
        cams = g.read_re10k(path)
        return cams.cam2world, cams.intrinsics(image_hw)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "frames" in data:
            d = g.read_transforms_json(path, image_hw)
        else:
            d = g.read_worldscore_cameras(path, image_hw)
        return d["cam2world"], None
    _fail(f"--trajectory {path}: unknown camera file type (.txt RealEstate10K, .json WorldScore / transforms, "
          ".npz geometry, or a Spatia folder)")


def prepare(args) -> dict:
    """Everything checked and loaded on the host before any compute (raises _UsageError / MirageError)."""
    from mirage_jax import geometry as g
    from mirage_jax.data.worlds import intrinsics_from_fov
    from mirage_jax.generate import providers
    from mirage_jax.geometry.trajectories import PRESETS

    if args.chunks < 1:
        _fail(f"--chunks must be >= 1, got {args.chunks}")
    if args.steps < 1:
        _fail(f"--steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        _fail(f"--seed must be >= 0, got {args.seed}")
    if args.memory_capacity is not None and args.memory_capacity < 1:
        _fail(f"--memory-capacity must be >= 1, got {args.memory_capacity}")
    need = g.num_frames_for_chunks(args.chunks)
    geo = None
    if args.geometry:
        if not Path(args.geometry).is_file():
            _fail(f"--geometry {args.geometry}: no such file")
        geo = g.read_geometry_npz(args.geometry)
        image = _first_frame_of(geo, args.geometry)
        K = geo.intrinsics[0]
    else:
        image = _read_image(args.image)
        K = None
    H, W = image.shape[:2]
    if H % 16 or W % 16:
        _fail(f"image size {W}x{H} (W x H) is not divisible by 16 (the VAE's stride); crop or resize it")
    if geo is not None and geo.image_hw != (H, W):
        _fail(f"--geometry {args.geometry}: frames are {W}x{H} but depths are {geo.image_hw[1]}x{geo.image_hw[0]}")
    if K is None:
        K = intrinsics_from_fov((H, W), args.fov)  # replaced below by a camera file's own intrinsics
    start = geo.poses_c2w[0] if geo is not None else np.eye(4, dtype=np.float32)

    # camera path
    if args.trajectory is None:
        if geo is None:
            _fail("--image needs --trajectory (a preset or a camera file)")
        poses, source = geo.poses_c2w, f"{args.geometry} poses"
    elif Path(args.trajectory).exists():
        poses, file_K = _camera_file(Path(args.trajectory), (H, W))
        source = args.trajectory
        if geo is None and file_K is not None:  # the camera file's intrinsics win over --fov
            K = file_K[0]
    elif args.trajectory in PRESETS:
        poses = g.preset(args.trajectory, chunks=args.chunks, start=start, loop=args.loop)
        source = f"preset {args.trajectory}" + (" (loop)" if args.loop else "")
    else:
        _fail(f"--trajectory {args.trajectory!r}: no such file and not a preset; presets: {', '.join(sorted(PRESETS))}")
    if len(poses) < need:
        _fail(f"--trajectory {source}: {len(poses)} cameras, but {args.chunks} chunks need {need} (33 + 32 (N - 1))")

    # depth
    depth_mode = args.depth or ("gt" if geo is not None else None)
    if depth_mode is None:
        _fail("--image needs depth for the written frames: --depth file --depth-file PATH or --depth model --depth-model M:F")
    if depth_mode == "gt":
        if geo is None:
            _fail("--depth gt needs --geometry (ground-truth depths); with --image use --depth file or model")
        if args.trajectory is not None:
            _fail("--depth gt uses the geometry file's depths, which belong to its own cameras; drop --trajectory")
        if geo.num_frames < need:
            _fail(f"--geometry {args.geometry}: {geo.num_frames} frames, but {args.chunks} chunks need {need}")
        depth = providers.GeometryDepth(geo.depths, args.geometry)
        first_depth = geo.depths[0]
    elif depth_mode == "file":
        if not args.depth_file:
            _fail("--depth file needs --depth-file PATH (a .npy [T, H, W] or an .npz with 'depths')")
        dp = Path(args.depth_file)
        if not dp.is_file():
            _fail(f"--depth-file {dp}: no such file")
        if dp.suffix == ".npy":
            depths = np.load(dp, allow_pickle=False)
        else:
            with np.load(dp, allow_pickle=False) as z:
                if "depths" not in z:
                    _fail(f"--depth-file {dp}: no 'depths' array (keys: {sorted(z.files)})")
                depths = z["depths"]
        if depths.ndim != 3 or depths.shape[1:] != (H, W):
            _fail(f"--depth-file {dp}: depths must be [T, {H}, {W}], got {list(depths.shape)}")
        if depths.shape[0] < need:
            _fail(f"--depth-file {dp}: depth for {depths.shape[0]} frames, but {args.chunks} chunks need {need}")
        if not np.all(np.isfinite(depths)):
            _fail(f"--depth-file {dp}: non-finite depths (use 0 for unknown)")
        depth = providers.GeometryDepth(depths, str(dp))
        first_depth = depths[0]
    else:
        if not args.depth_model or ":" not in args.depth_model:
            _fail("--depth model needs --depth-model module:function (a JAX depth function)")
        mod, fn = args.depth_model.split(":", 1)
        try:
            depth_fn = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            _fail(f"--depth-model {args.depth_model}: cannot import ({e})")
        depth = providers.JaxDepth(depth_fn)
        first_depth = depth(image[None], K[None], start[None], np.zeros(1, int))[0]

    mask = first_exclude = None
    if args.masks:
        if geo is None or geo.masks is None:
            _fail("--masks needs --geometry with a 'masks' array")
        mask = providers.GeometryMask(geo.masks, args.geometry)
        first_exclude = ~geo.masks[0]

    from mirage_jax.generate.pipeline import check_checkpoint

    check_checkpoint(args.checkpoint)
    if args.worldscore:
        g.write_worldscore_cameras(Path(args.out) / "camera_data.json", poses[:need],
                                   np.broadcast_to(K, (need, 3, 3)), (H, W), atol_px=0.5 + 1e-3)
    return dict(image=image, K=np.asarray(K, np.float32), poses=np.asarray(poses[:need], np.float32), depth=depth,
                first_depth=np.asarray(first_depth, np.float32), mask=mask, first_exclude=first_exclude,
                trajectory=source, depth_mode=depth_mode, image_hw=(H, W))


def _run(args, prep) -> None:
    from tqdm import tqdm

    from mirage_jax.diffusion import FlowEuler, FlowUniPC
    from mirage_jax.generate.outputs import write_outputs, write_worldscore_extras
    from mirage_jax.generate.pipeline import load_pipeline
    from mirage_jax.generate.rollout import Rollout, set_step_hook

    t0 = time.perf_counter()
    pipe = load_pipeline(args.checkpoint, seed=0)
    cfg = pipe.rollout_config(num_chunks=args.chunks, image_hw=prep["image_hw"], seed=args.seed,
                              memory_capacity=args.memory_capacity, memory_policy=args.memory_policy,
                              rewrite_first_frame=not args.no_rewrite_first_frame, tiled_decode=args.tiled_decode)
    sampler = (FlowUniPC if args.sampler == "unipc" else FlowEuler)(num_steps=args.steps)
    text = pipe.encode_text([args.prompt])
    r = Rollout(pipe.model, pipe.vae, text, prep["K"], prep["poses"], depth=prep["depth"], mask=prep["mask"],
                sampler=sampler, config=cfg)
    r.init(prep["image"], prep["first_depth"], prep["first_exclude"])
    t_setup = time.perf_counter() - t0
    bar = tqdm(total=args.chunks * args.steps, unit="step", disable=args.quiet, file=sys.stderr)
    set_step_hook(lambda i: bar.update(1))
    try:
        for c in range(args.chunks):
            bar.set_description(f"chunk {c + 1}/{args.chunks}")
            rec = r.chunk()
            bar.set_postfix(refs=len(rec["reference_latents"]), memory=rec["memory"]["count"])
    finally:
        set_step_hook(None)
        bar.close()
    result = r.result()
    meta = dict(
        command="mirage-jax generate", argv=vars(args), checkpoint=pipe.name, trajectory=prep["trajectory"],
        depth=prep["depth_mode"], config=dataclasses.asdict(cfg),
        sampler=dict(kind=type(sampler).__name__, **dataclasses.asdict(sampler)),
        seeds=dict(rollout=args.seed, noise="jax.random.fold_in(key(seed), latent index of the chunk's frame 0)"),
        seconds=dict(setup=t_setup, total=time.perf_counter() - t0),
    )
    write_outputs(args.out, result, meta, gif=not args.no_gif)
    if args.worldscore:
        write_worldscore_extras(args.out, result, prep["image"], args.prompt)
    print(f"wrote {result.video.shape[0]} frames, memory of {int(result.memory.count)} points to {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        prep = prepare(args)
    except (_UsageError, MirageError, ValueError, OSError) as e:
        msg = " ".join(str(e).split())
        print(f"mirage-jax generate: error: {msg}", file=sys.stderr)
        return 2
    _run(args, prep)
    return 0
