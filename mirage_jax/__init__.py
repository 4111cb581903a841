"""mirage_jax: Mirage (latent spatial memory video world model) in JAX / Flax NNX.

Conventions used throughout the package (see README.md):
  * arrays are channels-last: images [H, W, 3], latents [h, w, C], videos [T, H, W, C];
  * cameras are pinhole intrinsics K [3, 3] in pixels of the image they belong to and
    camera-to-world poses c2w [4, 4] in OpenCV axes (x right, y down, z forward);
  * depth is z-depth (distance along the camera's optical axis), not ray length.
Conversions from other conventions (OpenGL/Blender, world-to-camera, normalised intrinsics)
happen only at the edges, in :mod:`mirage_jax.geometry.formats`.
"""

__version__ = "0.1.0"
