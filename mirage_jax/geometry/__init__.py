"""Cameras, poses, file formats and trajectories (OpenCV camera-to-world inside the code)."""

from mirage_jax.geometry.cameras import (  # noqa: F401
    CONVENTIONS,
    OPENGL_TO_OPENCV,
    CameraError,
    check_intrinsics,
    check_pose,
    invert_pose,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    project_points,
    scale_intrinsics,
    unproject_grid,
)
