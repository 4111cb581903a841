"""Synthetic latent clips for tests and smoke runs (no VAE, no text encoder, no dataset).

Each clip follows the latent clip record (docs: the preprocessing's schema): a camera moves
sideways and yaws in front of a wall (world plane ``z = wall``), the z-depth is exact, and the
"latents" are a smooth world-anchored feature field (sinusoids of the world x, y of each
latent cell's surface point), so a cell shows the same features from every camera that sees
its point: the memory readout at a target pose predicts the target latents where it hits,
which is what the control branch has to learn. A moving rectangle per frame is marked in
``exclude`` (a stand-in for a dynamic object). Deterministic in ``seed``.
"""

from __future__ import annotations

import numpy as np

from mirage_jax.errors import ConfigError, check_hw

__all__ = ["synthetic_latent_clips", "synthetic_constants"]


def _pose(x: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[0, 3] = x
    return m


def _depth(K, c2w, hw, wall: float, scale: float = 1.0) -> np.ndarray:
    """z-depth of the plane z = wall at pixel centres (u + 0.5) * scale of an image of size hw."""
    h, w = hw
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    u = (u + 0.5) * scale
    v = (v + 0.5) * scale
    ray = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    dz = ray @ c2w[:3, :3].T.astype(np.float64)
    return (wall - c2w[2, 3]) / dz[..., 2]


def synthetic_latent_clips(
    num_clips: int,
    num_frames: int,
    latent_hw: tuple[int, int],
    channels: int,
    image_hw: tuple[int, int],
    text_len: int,
    text_dim: int,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """``num_clips`` latent clip records of ``num_frames`` latent frames each.

    Returns dicts with latents f32[F, h, w, C], depth f32[F, H, W], exclude bool[F, H, W],
    intrinsics f32[F, 3, 3], cam2world f32[F, 4, 4], text f32[L, D], caption, scene_id.
    """
    h, w = check_hw(tuple(latent_hw), "latent_hw", ConfigError)
    H, W = check_hw(tuple(image_hw), "image_hw", ConfigError)
    if H % h or W % w:
        raise ConfigError(f"image_hw {image_hw} must be an integer multiple of latent_hw {latent_hw}")
    rng = np.random.default_rng(seed)
    freqs = rng.normal(0, 2.0, (channels, 2))
    phase = rng.uniform(0, 2 * np.pi, channels)
    K = np.array([[0.9 * W, 0, W / 2], [0, 0.9 * W, H / 2], [0, 0, 1]], np.float32)
    clips = []
    for c in range(num_clips):
        wall = float(rng.uniform(2.5, 4.0))
        x0, speed, yaw0 = rng.uniform(-0.5, 0.5), rng.uniform(0.05, 0.15), rng.uniform(-0.1, 0.1)
        poses = np.stack([_pose(x0 + speed * f, yaw0 + 0.02 * f) for f in range(num_frames)])
        depth = np.stack([_depth(K, p, (H, W), wall) for p in poses]).astype(np.float32)
        lat = []
        for p in poses:
            # The surface point of each latent cell centre, seen through the latent-grid camera.
            d = _depth(K, p, (h, w), wall, scale=W / w)
            v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
            ray = np.stack([(u * W / w - K[0, 2]) / K[0, 0], (v * H / h - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
            world = (ray * d[..., None]) @ p[:3, :3].T + p[:3, 3]
            lat.append(np.sin(world[..., :2] @ freqs.T + phase))
        exclude = np.zeros((num_frames, H, W), bool)
        for f in range(num_frames):
            y, x = rng.integers(0, H - H // 4), rng.integers(0, W - W // 4)
            exclude[f, y : y + H // 4, x : x + W // 4] = True
        clips.append(
            {
                "latents": np.stack(lat).astype(np.float32),
                "depth": depth,
                "exclude": exclude,
                "intrinsics": np.broadcast_to(K, (num_frames, 3, 3)).copy(),
                "cam2world": poses.astype(np.float32),
                "text": rng.normal(0, 1, (text_len, text_dim)).astype(np.float32),
                "caption": np.asarray(f"synthetic wall {c}"),
                "scene_id": np.asarray(f"synthetic-{seed}-{c}"),
            }
        )
    return clips


def synthetic_constants(num_control: int, latent_hw, channels: int, text_len: int, text_dim: int, seed: int = 0):
    """A fixed stand-in score latent f32[num_control, h, w, C] (a per-frame constant with a
    different first frame, like the causal VAE's) and empty-prompt embedding f32[L, D]."""
    h, w = latent_hw
    rng = np.random.default_rng(seed + 1)
    per_frame = rng.normal(0, 1, (2, channels)).astype(np.float32)
    score = np.broadcast_to(per_frame[1], (num_control, h, w, channels)).copy()
    score[0] = per_frame[0]
    empty = rng.normal(0, 1, (text_len, text_dim)).astype(np.float32)
    return score, empty
