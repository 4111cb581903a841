"""Real calibrated data that ships offline: the Middlebury 2014 *motorcycle* stereo pair.

scikit-image packages the pair (``skimage.data.stereo_motorcycle``), down-sampled 4x from the
benchmark's full resolution, with its ground-truth disparity of the left view. Its docstring gives
the calibration of the down-sampled images (spec section 9)::

    Focal length:        994.978 px
    Principal point x:   311.193 px
    Principal point y:   254.877 px
    Principal point dx:   31.086 px   (doffs = cx_right - cx_left)
    Baseline:            193.001 mm

From it this module builds a two-view sample in the project's conventions (OpenCV axes, pinhole
intrinsics in pixels of the image they belong to, camera-to-world poses, z-depth):

* metric depth of the left view, in **metres**: ``Z = f * B / (disp + doffs)``;
* ``K_left = [[f, 0, cx], [0, f, cy], [0, 0, 1]]`` and ``K_right`` with principal point
  ``cx + doffs``;
* ``cam2world_left = I`` and ``cam2world_right`` = translation ``(B, 0, 0)`` with the same rotation
  (the pair is rectified), so a left pixel ``x`` with disparity ``d`` lands at ``x - d`` in the right
  image.

Pixels without ground truth (non-finite disparity: scikit-image stores ``inf``; its docstring says
NaN, both are handled) get depth 0 and ``valid = False``: nothing is guessed.

Only NumPy (and scikit-image / Pillow, imported lazily) is used here, so loading the data does not
import jax.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = [
    "MOTORCYCLE",
    "StereoCalibration",
    "StereoPair",
    "middlebury_motorcycle",
]


@dataclasses.dataclass(frozen=True)
class StereoCalibration:
    """Calibration of a rectified stereo pair in the Middlebury convention.

    focal: horizontal focal length fx in pixels (the one in the disparity-to-depth formula).
    cx, cy: principal point of the LEFT image in pixels.
    doffs: x-difference of the principal points, cx_right - cx_left, in pixels.
    baseline_m: distance between the camera centres in metres (the right camera sits at +x).
    focal_y: vertical focal length fy in pixels; None means fy = fx (square pixels, as shipped).
    """

    focal: float
    cx: float
    cy: float
    doffs: float
    baseline_m: float
    focal_y: float | None = None

    @property
    def fy(self) -> float:
        return self.focal if self.focal_y is None else self.focal_y

    def depth_from_disparity(self, disparity) -> tuple[np.ndarray, np.ndarray]:
        """Z-depth in metres from disparity in pixels: ``Z = focal * baseline / (disp + doffs)``.

        disparity: float [H, W] (pixels), non-finite where unknown.
        Returns (depth float32 [H, W] in metres with 0 where invalid, valid bool [H, W]); a pixel is
        valid when its disparity is finite and ``disp + doffs > 0`` (a finite, positive depth).
        """
        disparity = np.asarray(disparity)
        if disparity.ndim != 2:
            raise ValueError(f"disparity: expected shape [H, W], got {disparity.shape}")
        if not np.issubdtype(disparity.dtype, np.floating):
            raise ValueError(f"disparity: expected a floating dtype, got {disparity.dtype}")
        d = disparity.astype(np.float64)
        denom = np.where(np.isfinite(d), d + self.doffs, 0.0)
        valid = denom > 0.0
        depth = np.zeros(d.shape, np.float64)
        np.divide(self.focal * self.baseline_m, denom, out=depth, where=valid)
        return depth.astype(np.float32), valid

    def intrinsics(self, view: str) -> np.ndarray:
        """Pinhole intrinsics float32 [3, 3] (pixels) of ``view`` in {"left", "right"}."""
        if view not in ("left", "right"):
            raise ValueError(f"view must be 'left' or 'right', got {view!r}")
        cx = self.cx + (self.doffs if view == "right" else 0.0)
        return np.array(
            [[self.focal, 0.0, cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], np.float32
        )

    def cam2world(self, view: str) -> np.ndarray:
        """Camera-to-world float32 [4, 4] (OpenCV axes, metres) with the left camera as the world."""
        if view not in ("left", "right"):
            raise ValueError(f"view must be 'left' or 'right', got {view!r}")
        pose = np.eye(4, dtype=np.float32)
        if view == "right":
            pose[0, 3] = self.baseline_m
        return pose

    def scaled(self, sx: float, sy: float) -> "StereoCalibration":
        """Calibration of the images resized by (sx, sy) = (w / W, h / H), pixel-centre exact.

        Uses the centred convention c' = (c + 0.5) s - 0.5 for the principal point (what an
        area resize does to pixel centres); doffs is a difference of principal points, so it
        scales by sx. The baseline is metric and does not change. Integer image sizes make sx
        and sy differ slightly in general, so fx and fy are scaled separately.
        """
        if not (sx > 0 and sy > 0):
            raise ValueError(f"scaled: scales must be positive, got sx={sx}, sy={sy}")
        return StereoCalibration(
            focal=self.focal * sx,
            focal_y=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            doffs=self.doffs * sx,
            baseline_m=self.baseline_m,
        )


# The values printed in the docstring of skimage.data.stereo_motorcycle (valid for the 4x
# down-sampled images that scikit-image ships); the baseline converted from 193.001 mm.
MOTORCYCLE = StereoCalibration(
    focal=994.978, cx=311.193, cy=254.877, doffs=31.086, baseline_m=193.001e-3
)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True)
class StereoPair:
    """A calibrated, rectified two-view sample; the left camera is the world frame.

    Fields (all NumPy, read-only):
      left, right:   uint8 [H, W, 3] RGB photos.
      depth:         float32 [H, W] z-depth of the LEFT view in metres (``depth_unit``), 0 where
                     invalid.
      valid:         bool [H, W], True where the ground truth gives a depth.
      disparity:     float32 [H, W] ground-truth disparity of the left view in pixels of these
                     images (right x = left x - disparity), non-finite where unknown.
      K_left, K_right:               float32 [3, 3] intrinsics in pixels (K_right has cx + doffs).
      cam2world_left, cam2world_right: float32 [4, 4], OpenCV axes, metres.
      calibration:   the StereoCalibration these were built from.
      name:          a short identifier of the scene.
    """

    left: np.ndarray
    right: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    disparity: np.ndarray
    K_left: np.ndarray
    K_right: np.ndarray
    cam2world_left: np.ndarray
    cam2world_right: np.ndarray
    calibration: StereoCalibration
    name: str
    depth_unit: str = "m"

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of both photos."""
        return (int(self.left.shape[0]), int(self.left.shape[1]))

    @classmethod
    def from_arrays(
        cls, left, right, disparity, calibration: StereoCalibration, name: str
    ) -> "StereoPair":
        """Builds a pair from uint8 photos [H, W, 3] and a disparity map [H, W] (pixels)."""
        left = np.asarray(left)
        right = np.asarray(right)
        disparity = np.asarray(disparity)
        for arg, img in (("left", left), ("right", right)):
            if img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"{arg}: expected an RGB image [H, W, 3], got shape {img.shape}")
            if img.dtype != np.uint8:
                raise ValueError(f"{arg}: expected dtype uint8, got {img.dtype}")
        if right.shape != left.shape:
            raise ValueError(f"right: shape {right.shape} differs from left {left.shape}")
        if disparity.shape != left.shape[:2]:
            raise ValueError(
                f"disparity: expected shape {left.shape[:2]} (the left image's H, W), got {disparity.shape}"
            )
        depth, valid = calibration.depth_from_disparity(disparity)
        return cls(
            left=_readonly(left),
            right=_readonly(right),
            depth=_readonly(depth),
            valid=_readonly(valid),
            disparity=_readonly(disparity.astype(np.float32)),
            K_left=_readonly(calibration.intrinsics("left")),
            K_right=_readonly(calibration.intrinsics("right")),
            cam2world_left=_readonly(calibration.cam2world("left")),
            cam2world_right=_readonly(calibration.cam2world("right")),
            calibration=calibration,
            name=name,
        )

    def resized(self, scale: float) -> "StereoPair":
        """The pair down- or up-sampled by ``scale`` (new H, W = round(scale * H), round(scale * W)).

        Photos: area (box) filter. Disparity: nearest sample at the new pixel centres (no
        blending across depth edges or with unknown pixels), times sx. Intrinsics: the centred
        convention (see StereoCalibration.scaled). Depth stays metric and is recomputed.
        """
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        H, W = self.image_hw
        h, w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
        if (h, w) == (H, W):
            return self
        from PIL import Image

        def photo(img):
            return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX))

        sx, sy = w / W, h / H
        rows = np.minimum(((np.arange(h) + 0.5) / sy).astype(np.int64), H - 1)
        cols = np.minimum(((np.arange(w) + 0.5) / sx).astype(np.int64), W - 1)
        disparity = self.disparity[rows[:, None], cols[None, :]] * np.float32(sx)
        return StereoPair.from_arrays(
            photo(self.left),
            photo(self.right),
            disparity,
            self.calibration.scaled(sx, sy),
            name=f"{self.name}@{h}x{w}",
        )


@functools.lru_cache(maxsize=1)
def middlebury_motorcycle() -> StereoPair:
    """The Middlebury 2014 motorcycle pair from scikit-image as a calibrated StereoPair.

    Returns left/right uint8 [500, 741, 3], depth float32 [500, 741] in metres (about 2.1 to 5.0 m,
    0 where unknown), valid bool [500, 741] (about 93% of pixels), K_left / K_right float32
    [3, 3], cam2world_left = I and cam2world_right = translation (0.193001, 0, 0) as float32
    [4, 4]. The result is cached and its arrays are read-only; copy before modifying.
    """
    try:
        from skimage import data as skdata
    except ImportError as e:  # pragma: no cover - scikit-image is a test dependency
        raise ImportError(
            "middlebury_motorcycle needs scikit-image (pip install scikit-image); it ships the pair"
        ) from e
    left, right, disparity = skdata.stereo_motorcycle()
    return StereoPair.from_arrays(left, right, disparity, MOTORCYCLE, name="middlebury2014_motorcycle")
