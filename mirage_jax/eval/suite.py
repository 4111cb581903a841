"""The held-out evaluation suite and :func:`evaluate` (issue 10, section 3).

Held-out worlds. Procedural scene seeds are ints in [0, 2**31) (``sample_scene``). Training
draws its worlds from the ``synthetic_worlds`` builder (:mod:`mirage_jax.data.builders`), whose
example ``i`` of split ``s`` of config ``c`` has the seed ``derive_seed("synthetic_worlds", c, s,
i)``: a SHA-256 hash, so training seeds are spread over the whole range. The evaluation worlds
are the top :data:`HELD_OUT_SEED_COUNT` seeds, ``HELD_OUT_SEEDS = range(2**31 - 2**16,
2**31)``: this constant is the one place that says so (the demo and the ablations take their
worlds from here too), and a test checks every training seed of every ``synthetic_worlds``
config against it (each hashed seed lands in the range with probability 2**-15, so this is
checked, not assumed).

The suite. :func:`heldout_suite` is a fixed list, seeded by :data:`SUITE_SEED`, of 8 worlds
(indoor and outdoor alternating, or indoor only) x 3 camera paths that all come back (so closed-loop PSNR
applies): ``out_and_back`` (a dolly or truck move out and back, ``loop=True``), ``orbit`` (a full
360-degree orbit about a point ahead, ending at the start) and ``pan`` (a pan out and back):
24 trajectories. Poses come from :func:`mirage_jax.data.worlds.random_trajectory` (collision
free, deterministic in the path seed and the scene) at the requested number of chunks, frames
and exact depth from the renderer (:func:`render_instance`).

:func:`evaluate` runs a generator on each instance and measures, against the renderer's ground
truth (:mod:`mirage_jax.eval.metrics`): per-frame PSNR / SSIM over the generated frames (frame 0,
the input, is left out), closed-loop PSNR on the frames where the camera returns (against the
earlier generated frame and against the truth), the 3D-consistency error of generated frame
pairs one latent apart (4 frames) warped with ground-truth depth and poses (with the same error
of the ground-truth frames beside it: the warp's own resampling floor), and the AbsRel of a
depth model when one is given, and, for :func:`rollout_generate_fn`'s rollouts, the memory's
bytes (final and peak over chunks) and the readout coverage per chunk. Moving objects are left
out of the closed-loop and consistency comparisons (they are not expected to stay put). It
writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mirage_jax.errors import InputError
from mirage_jax.eval import metrics as M
from mirage_jax.geometry.trajectories import num_frames_for_chunks

__all__ = [
    "aggregate_table",
    "json_safe",
    "markdown_table",
    "HELD_OUT_SEED_COUNT",
    "HELD_OUT_SEED_START",
    "HELD_OUT_SEEDS",
    "PATH_TYPES",
    "SUITE_SEED",
    "Instance",
    "SuiteEntry",
    "check_held_out",
    "evaluate",
    "heldout_suite",
    "held_out_seed",
    "is_held_out",
    "render_instance",
    "rollout_generate_fn",
    "rollout_record",
    "select",
]

HELD_OUT_SEED_START = 2**31 - 2**16
HELD_OUT_SEED_COUNT = 2**16
HELD_OUT_SEEDS = range(HELD_OUT_SEED_START, HELD_OUT_SEED_START + HELD_OUT_SEED_COUNT)
SUITE_SEED = 20_251_010
NUM_WORLDS = 8
PATH_TYPES = ("out_and_back", "orbit", "pan")
CONSISTENCY_STRIDE = 4  # one latent frame apart
_MEMORY_FIELDS = ("memory_bytes_held", "memory_bytes_peak", "memory_points", "readout_coverage")


def is_held_out(seed: int) -> bool:
    """Whether a scene seed is reserved for evaluation (never a training world)."""
    return int(seed) in HELD_OUT_SEEDS


def held_out_seed(index: int) -> int:
    """The scene seed of held-out world ``index`` (0 <= index < HELD_OUT_SEED_COUNT)."""
    if not 0 <= int(index) < HELD_OUT_SEED_COUNT:
        raise InputError(f"held-out world index must be in [0, {HELD_OUT_SEED_COUNT}), got {index}")
    return HELD_OUT_SEED_START + int(index)


def check_held_out(seed: int, what: str = "scene seed") -> int:
    """``seed`` if it is held out, else InputError naming the held-out range."""
    if not is_held_out(seed):
        raise InputError(f"{what} {seed} is not a held-out world seed (held out: [{HELD_OUT_SEEDS.start}, "
                         f"{HELD_OUT_SEEDS.stop}); see mirage_jax.eval.suite)")
    return int(seed)


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """One trajectory of the suite.

    name: ``w<world>-<kind>-<path>``; world: index of the held-out world; scene_seed / scene_kind:
    :func:`~mirage_jax.data.worlds.sample_scene`'s arguments; path: one of PATH_TYPES;
    preset / distance / angle_deg: the camera move (``geometry.trajectories.preset``, always
    returning); path_seed: :func:`~mirage_jax.data.worlds.random_trajectory`'s seed (start
    placement); fov_deg: horizontal field of view.
    """

    name: str
    world: int
    scene_seed: int
    scene_kind: str
    path: str
    preset: str
    distance: float | None
    angle_deg: float | None
    path_seed: int
    fov_deg: float

    def preset_kwargs(self) -> dict:
        kw = {} if self.preset == "orbit" else dict(loop=True)
        if self.distance is not None:
            kw["distance"] = self.distance
        if self.angle_deg is not None:
            kw["angle_deg"] = self.angle_deg
        return kw


def heldout_suite(num_worlds: int = NUM_WORLDS, kinds=("indoor", "outdoor")) -> tuple[SuiteEntry, ...]:
    """The fixed suite (module docstring): ``num_worlds`` x 3 entries, world-major. The first n
    worlds of a larger suite are the same as a suite of n worlds. World w is of scene kind
    ``kinds[w % len(kinds)]`` (``kinds=("indoor",)`` for a model trained on rooms only); its
    seed, field of view and camera moves do not depend on ``kinds``."""
    if isinstance(num_worlds, bool) or not isinstance(num_worlds, (int, np.integer)) or not 1 <= num_worlds <= NUM_WORLDS:
        raise InputError(f"num_worlds must be an int in [1, {NUM_WORLDS}], got {num_worlds!r}")
    kinds = tuple(kinds)
    if not kinds or any(k not in ("indoor", "outdoor") for k in kinds):
        raise InputError(f"kinds must be a non-empty sequence of 'indoor' / 'outdoor', got {kinds!r}")
    entries = []
    for w in range(int(num_worlds)):
        rng = np.random.default_rng([SUITE_SEED, w])
        kind = kinds[w % len(kinds)]
        seed = held_out_seed(w)
        fov = round(float(rng.uniform(50.0, 70.0)), 1)
        moves = dict(
            out_and_back=(str(rng.choice(["push_in", "pull_out", "move_left", "move_right"])),
                          round(float(rng.uniform(0.5, 1.0)), 2), None),
            orbit=("orbit", round(float(rng.uniform(0.4, 0.7)), 2), None),
            pan=(str(rng.choice(["pan_left", "pan_right"])), None, round(float(rng.uniform(45.0, 75.0)), 1)),
        )
        for path in PATH_TYPES:
            preset, distance, angle = moves[path]
            entries.append(SuiteEntry(name=f"w{w}-{kind}-{path}", world=w, scene_seed=seed, scene_kind=kind, path=path,
                                      preset=preset, distance=distance, angle_deg=angle,
                                      path_seed=int(rng.integers(2**31)), fov_deg=fov))
    return tuple(entries)


def select(suite, trajectories=None) -> tuple[SuiteEntry, ...]:
    """Entries whose path type or name is in ``trajectories`` (None: all), in suite order;
    InputError for a name that matches nothing."""
    suite = tuple(suite)
    if trajectories is None:
        return suite
    wanted = list(trajectories)
    known = set(PATH_TYPES) | {e.name for e in suite}
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise InputError(f"unknown trajectories {unknown}; path types: {list(PATH_TYPES)}, or entry names such as "
                         f"{suite[0].name!r}")
    return tuple(e for e in suite if e.path in wanted or e.name in wanted)


@dataclasses.dataclass
class Instance:
    """A suite entry rendered: frames uint8 [T, H, W, 3], depth f32 [T, H, W] (0 = sky),
    dynamic / sky bool [T, H, W], intrinsics f32 [3, 3] (shared), cam2world f32 [T, 4, 4]
    OpenCV, times f32 [T] seconds, caption, the Scene (for ground-truth depth providers)."""

    entry: SuiteEntry
    frames: np.ndarray
    depth: np.ndarray
    dynamic: np.ndarray
    sky: np.ndarray
    intrinsics: np.ndarray
    cam2world: np.ndarray
    times: np.ndarray
    caption: str
    scene: object
    fps: float

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.frames.shape[1:3])


def render_instance(entry: SuiteEntry, image_hw, chunks: int = 1, fps: float = 16.0) -> Instance:
    """Renders an entry's ground truth for a rollout of ``chunks`` chunks (33 + 32 (chunks - 1)
    frames) at ``image_hw``."""
    from mirage_jax.data.worlds import caption, intrinsics_from_fov, random_trajectory, render_frames, sample_scene

    check_held_out(entry.scene_seed, f"{entry.name}: scene seed")
    T = num_frames_for_chunks(chunks)
    scene = sample_scene(entry.scene_seed, entry.scene_kind)
    times = np.arange(T, dtype=np.float64) / float(fps)
    c2w = random_trajectory(scene, entry.path_seed, T, kind=entry.preset, times=times, **entry.preset_kwargs())
    K = intrinsics_from_fov(image_hw, entry.fov_deg)
    out = render_frames(scene, np.broadcast_to(K, (T, 3, 3)), c2w, tuple(image_hw), times.astype(np.float32))
    return Instance(
        entry=entry,
        frames=np.round(np.asarray(out["rgb"]) * 255.0).astype(np.uint8),
        depth=np.asarray(out["depth"], np.float32),
        dynamic=np.asarray(out["dynamic"], bool),
        sky=np.asarray(out["sky"], bool),
        intrinsics=K,
        cam2world=np.asarray(c2w, np.float32),
        times=times.astype(np.float32),
        caption=caption(scene),
        scene=scene,
        fps=float(fps),
    )


def rollout_generate_fn(pipeline, *, chunks: int = 1, sampler=None, seed: int = 42, depth_fn=None,
                        depth_noise: float | None = None, masks: bool = True,
                        **rollout_options) -> Callable[[Instance], np.ndarray]:
    """A generator for :func:`evaluate` from a :class:`~mirage_jax.generate.pipeline.Pipeline`:
    the chunked rollout with the memory (:class:`~mirage_jax.generate.rollout.Rollout`) from the
    instance's first frame, cameras and caption.

    Depth for write-back (the first frame's included) is the renderer's exact depth; with
    ``depth_noise`` that depth times seeded log-normal noise of that relative size
    (:class:`~mirage_jax.generate.providers.NoisyDepth`, seeded by ``seed``); or ``depth_fn`` (a
    JAX depth model ``fn(images [n, H, W, 3] in [0, 1], K [n, 3, 3]) -> [n, H, W]``) on the
    generated frames. With ``masks`` the dynamic objects and the sky are not written (spec 2).
    ``rollout_options`` go to :class:`~mirage_jax.generate.rollout.RolloutConfig` (e.g.
    ``read_memory``, ``memory_capacity``, ``memory_policy``, ``max_reference``) through
    :meth:`~mirage_jax.generate.pipeline.Pipeline.rollout_config`: ``memory_kind`` is the
    pipeline's ``control_source`` (a different one raises ConfigError).

    The returned function keeps the last rollout's
    :class:`~mirage_jax.generate.rollout.RolloutResult` as its ``last_result`` attribute, which
    :func:`evaluate` turns into the memory figures of the trajectory (:func:`rollout_record`).
    """
    from mirage_jax.generate import providers
    from mirage_jax.generate.rollout import Rollout

    if depth_fn is not None and depth_noise is not None:
        raise InputError("rollout_generate_fn: depth_fn (a depth model) and depth_noise (noisy exact depth) exclude "
                         "each other")
    pipeline.rollout_config(num_chunks=chunks, seed=seed, **rollout_options)  # bad options fail here, not later

    model_depth = None if depth_fn is None else providers.JaxDepth(depth_fn)  # jitted once for every instance

    def generate(inst: Instance) -> np.ndarray:
        generate.last_result = None
        cfg = pipeline.rollout_config(num_chunks=chunks, image_hw=inst.image_hw, seed=seed, **rollout_options)
        depth = model_depth
        if depth is None:
            depth = providers.GeometryDepth(inst.depth, f"{inst.entry.name}: rendered depth")
            if depth_noise is not None:
                depth = providers.NoisyDepth(depth, depth_noise, seed)
        first_depth = depth(inst.frames[:1], inst.intrinsics[None], inst.cam2world[:1], np.zeros(1, int))[0]
        mask = None
        if masks:
            mask = providers.GeometryMask(~(inst.dynamic | inst.sky), f"{inst.entry.name}: rendered masks")
        first_exclude = (inst.dynamic[0] | inst.sky[0]) if masks else None
        text = pipeline.encode_text([inst.caption])
        r = Rollout(pipeline.model, pipeline.vae, text, inst.intrinsics, inst.cam2world, depth=depth, mask=mask,
                    sampler=sampler, config=cfg)
        r.init(inst.frames[0], first_depth, first_exclude)
        for _ in range(chunks):
            r.chunk()
        generate.last_result = r.result()
        return generate.last_result.video

    generate.last_result = None
    return generate


def rollout_record(result) -> dict:
    """The memory figures of a :class:`~mirage_jax.generate.rollout.RolloutResult`: bytes held by
    the final memory and the peak over chunks (:func:`~mirage_jax.generate.rollout.memory_bytes`),
    points held, and the readout coverage of each chunk (the fraction of the target's latent cells
    the memory covered; for the RGB cache, of the pixels of the chunk's 33 renders)."""
    from mirage_jax.generate.rollout import memory_bytes

    held = [c["memory_bytes"]["held"] for c in result.chunks]
    final = memory_bytes(result.memory)["held"]
    return dict(memory_bytes_held=final, memory_bytes_peak=max(held + [final]), memory_points=int(result.memory.count),
                readout_coverage=[float(c["readout_coverage"]) for c in result.chunks])


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _evaluate_instance(inst: Instance, video: np.ndarray, depth, criteria: dict) -> dict:
    """One trajectory's row; ``depth``: a :class:`~mirage_jax.generate.providers.JaxDepth` or None."""
    gt, T = inst.frames, inst.frames.shape[0]
    keep = ~inst.dynamic
    per_psnr = np.asarray(M.psnr(video[1:], gt[1:], max_val=255))
    per_ssim = np.asarray(M.ssim(video[1:], gt[1:], max_val=255)) if min(inst.image_hw) >= 11 else None
    loop = M.closed_loop_psnr(video, gt, inst.cam2world, mask=keep, **criteria)
    pairs = np.array([(i, i + CONSISTENCY_STRIDE) for i in range(0, T - CONSISTENCY_STRIDE, CONSISTENCY_STRIDE)])
    cons = M.warp_consistency(video, inst.depth, inst.intrinsics, inst.cam2world, pairs, keep=keep)
    floor = M.warp_consistency(gt, inst.depth, inst.intrinsics, inst.cam2world, pairs, keep=keep)
    rec = dict(
        name=inst.entry.name, world=inst.entry.world, scene_seed=inst.entry.scene_seed,
        scene_kind=inst.entry.scene_kind, path=inst.entry.path, preset=inst.entry.preset, frames=T,
        psnr=float(np.mean(per_psnr)), ssim=None if per_ssim is None else float(np.mean(per_ssim)),
        psnr_per_frame=per_psnr.tolist(),
        closed_loop_pairs=loop["pairs"].tolist(),
        closed_loop_psnr_vs_earlier=loop["mean_vs_earlier"], closed_loop_psnr_vs_gt=loop["mean_vs_gt"],
        consistency_mse=cons["mean_mse"], consistency_coverage=cons["mean_coverage"],
        consistency_mse_gt=floor["mean_mse"],
        depth_abs_rel=None,
    )
    if depth is not None:
        sub = slice(None, None, CONSISTENCY_STRIDE)
        pred = depth(gt[sub], np.broadcast_to(inst.intrinsics, (len(gt[sub]), 3, 3)), None, None)
        rec["depth_abs_rel"] = float(np.mean(np.asarray(M.abs_rel(pred, inst.depth[sub], keep[sub]))))
    return rec


_TABLE = (  # (key, header, format)
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("closed_loop_psnr_vs_earlier", "PSNRc vs earlier", "{:.2f}"),
    ("closed_loop_psnr_vs_gt", "PSNRc vs GT", "{:.2f}"),
    ("consistency_mse", "3D-cons. MSE", "{:.5f}"),
    ("consistency_mse_gt", "(GT floor)", "{:.5f}"),
    ("depth_abs_rel", "depth AbsRel", "{:.3f}"),
    ("memory_bytes_held", "memory MiB", lambda v: f"{v / 2**20:.3f}"),
    ("memory_bytes_peak", "(peak)", lambda v: f"{v / 2**20:.3f}"),
    ("seconds", "s", "{:.1f}"),
)


def _aggregate(rows: list[dict]) -> dict:
    out = {key: _mean([r[key] for r in rows]) for key, _, _ in _TABLE}
    out["trajectories"] = len(rows)
    out["closed_loop_pairs"] = int(sum(len(r["closed_loop_pairs"]) for r in rows))
    return out


def _fmt(v, fmt):
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    return fmt(v) if callable(fmt) else fmt.format(v)


def _table_head(first: str, second: str) -> list[str]:
    head = [first, second] + [h for _, h, _ in _TABLE]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _table_line(name: str, second, values: dict) -> str:
    return "| " + " | ".join([name, str(second)] + [_fmt(values[k], f) for k, _, f in _TABLE]) + " |"


def markdown_table(report: dict) -> str:
    """The report as a markdown table: one row per trajectory, then the means per path type
    and over everything."""
    lines = _table_head("trajectory", "frames")
    lines += [_table_line(r["name"], r["frames"], r) for r in report["trajectories"]]
    for label, agg in list(report["by_path"].items()) + [("**all**", report["aggregate"])]:
        name = label if label.startswith("**") else f"mean {label}"
        lines.append(_table_line(name, agg["trajectories"], agg))
    return "\n".join(lines) + "\n"


def aggregate_table(reports: dict) -> str:
    """Several :func:`evaluate` reports side by side (name -> report): one line per report with
    its aggregate (means over its trajectories), in the columns of :func:`markdown_table`."""
    lines = _table_head("run", "trajectories")
    lines += [_table_line(name, rep["aggregate"]["trajectories"], rep["aggregate"]) for name, rep in reports.items()]
    return "\n".join(lines) + "\n"


def json_safe(x):
    """JSON without NaN / Infinity literals (not JSON): non-finite floats become "inf", "-inf",
    "nan" strings."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else str(float(x))
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate(generate_fn: Callable[[Instance], np.ndarray], suite, *, image_hw=(128, 128), chunks: int = 1,
             out=None, depth_fn=None, worldscore: bool = False, label: str = "", progress: bool = True,
             settings: dict | None = None, **criteria) -> dict:
    """Runs ``generate_fn`` on every suite entry and measures it against the ground truth.

    Args:
      generate_fn: ``fn(instance: Instance) -> uint8 [T, H, W, 3]`` the generated video for the
        instance's first frame, cameras and caption (:func:`rollout_generate_fn`). If it has a
        ``last_result`` attribute (a RolloutResult, set by each call), the trajectory's row also
        gets :func:`rollout_record`'s memory figures (else they are None).
      suite: SuiteEntry sequence (:func:`heldout_suite`, :func:`select`), or Instances already
        rendered at ``image_hw`` and ``chunks`` (:func:`render_instance`; to run several
        generators on one rendering).
      image_hw, chunks: the rendering size and the rollout length (33 + 32 (chunks - 1) frames).
      out: folder for ``results.json`` and ``results.md`` (and, with ``worldscore``, the
        WorldScore layout of each generated video under ``worldscore/<name>/``).
      depth_fn: optional JAX depth model ``fn(images [n, H, W, 3] in [0, 1], K [n, 3, 3]) ->
        [n, H, W]``, scored by AbsRel on every 4th ground-truth frame.
      settings: more entries for the report's ``settings`` (the generator's options).
      criteria: :func:`~mirage_jax.eval.metrics.revisit_pairs`' thresholds.

    Returns:
      dict(label, settings, trajectories: one dict per entry (metrics, per-frame PSNR, loop
      pairs, memory figures, seconds of generate_fn: the first includes compilation), by_path: means per path
      type, aggregate: means over trajectories
      (metrics a trajectory lacks, e.g. PSNRc without a revisit, are left out of the mean)).
    """
    from tqdm import tqdm

    suite = tuple(suite)
    if not suite:
        raise InputError("evaluate: the suite is empty")
    defaults = {k: p.default for k, p in inspect.signature(M.revisit_pairs).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    if set(criteria) - set(defaults):
        raise InputError(f"evaluate: unknown revisit criteria {sorted(set(criteria) - set(defaults))}; "
                         f"known: {sorted(defaults)}")
    frames = num_frames_for_chunks(chunks)
    depth = None
    if depth_fn is not None:
        from mirage_jax.generate.providers import JaxDepth

        depth = JaxDepth(depth_fn)  # jitted once: every instance's frames have the same shape
    rows = []
    for item in tqdm(suite, desc="evaluate", unit="trajectory", disable=not progress):
        if isinstance(item, Instance):
            inst = item
            if inst.image_hw != tuple(image_hw) or inst.frames.shape[0] != frames:
                raise InputError(f"evaluate: instance {inst.entry.name} is {inst.frames.shape[0]} frames of "
                                 f"{inst.image_hw[0]}x{inst.image_hw[1]}; expected {frames} ({chunks} chunks) of "
                                 f"{image_hw[0]}x{image_hw[1]}")
        else:
            inst = render_instance(item, image_hw, chunks)
        entry = inst.entry
        t0 = time.perf_counter()
        video = np.asarray(generate_fn(inst))
        seconds = time.perf_counter() - t0
        if video.shape != inst.frames.shape or video.dtype != np.uint8:
            raise InputError(f"evaluate: generate_fn returned {video.dtype} {list(video.shape)} for {entry.name}; "
                             f"expected uint8 {list(inst.frames.shape)}")
        rec = _evaluate_instance(inst, video, depth, criteria)
        last = getattr(generate_fn, "last_result", None)
        rec.update(rollout_record(last) if last is not None else dict.fromkeys(_MEMORY_FIELDS))
        rec["seconds"] = seconds
        rows.append(rec)
        if out is not None and worldscore:
            from mirage_jax.eval.worldscore import write_instance

            write_instance(Path(out) / "worldscore" / entry.name, video, inst.intrinsics, inst.cam2world,
                           input_image=inst.frames[0], prompt=inst.caption, shift_principal_point=True)
    by_path = {p: _aggregate([r for r in rows if r["path"] == p]) for p in PATH_TYPES if any(r["path"] == p for r in rows)}
    base = dict(image_hw=list(image_hw), chunks=chunks, frames=rows[0]["frames"],
                held_out_seeds=[HELD_OUT_SEEDS.start, HELD_OUT_SEEDS.stop], suite_seed=SUITE_SEED,
                consistency_stride=CONSISTENCY_STRIDE, revisit_criteria={**defaults, **criteria})
    if clash := sorted(set(settings or {}) & set(base)):
        raise InputError(f"evaluate: settings {clash} are evaluate's own")
    report = dict(
        label=label,
        settings={**base, **(settings or {})},
        trajectories=rows,
        by_path=by_path,
        aggregate=_aggregate(rows),
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
        title = f"# Evaluation{': ' + label if label else ''}\n\n"
        (out / "results.md").write_text(title + markdown_table(report))
    return report
