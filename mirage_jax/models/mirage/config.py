"""Hyperparameters of the Mirage model: the Wan backbone, the control branch (VACE) and LoRA.

Mirrors the reference release (spec sections 3, 10.3, 10.4); runtime knobs (dtypes, attention,
remat, scanned layers) stay in :class:`~mirage_jax.models.wan.layers.WanRuntime`.
"""

from __future__ import annotations

import dataclasses
import math

from mirage_jax.errors import ConfigError
from mirage_jax.models.wan.dit import WanDiTConfig

__all__ = ["MirageConfig", "DEFAULT_TARGETS", "REFERENCE_TARGET_NAMES", "default_control_layers"]

# The Dense layers of a WanBlock (paths inside the block) and their names in the reference's
# original Wan naming (``blocks.N.<name>``, spec 10.1 / 10.4). diffusers calls them
# ``attn1.to_q`` ... ``attn2.to_out.0``, ``ffn.net.0.proj``, ``ffn.net.2``.
REFERENCE_TARGET_NAMES: dict[str, str] = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out": "cross_attn.o",
    "ffn.proj_in": "ffn.0",
    "ffn.proj_out": "ffn.2",
}

# The reference's 10 LoRA targets per backbone block (all of the above; spec 10.4).
DEFAULT_TARGETS: tuple[str, ...] = tuple(REFERENCE_TARGET_NAMES)

_CONTROL_INITS = ("reference", "copy")


def default_control_layers(num_layers: int) -> tuple[int, ...]:
    """The reference's layer list, which its files do not store (spec 10.3): every 5th layer
    for 40-layer backbones (0, 5, ..., 35), every 2nd layer otherwise (0, 2, ..., 28 for the
    30-layer 5B model; ``(0,)`` for a 1- or 2-layer test model)."""
    stride = 5 if num_layers == 40 else 2
    return tuple(range(0, num_layers, stride))


@dataclasses.dataclass(frozen=True)
class MirageConfig:
    """The Mirage model: a Wan DiT plus a VACE control branch and optional LoRA on the backbone.

    Attributes:
      dit: the backbone's :class:`WanDiTConfig` (temporal patch size must be 1, as Wan2.x).
      control_layers: backbone layers after which a hint is added, one control block each, in
        increasing order; None -> :func:`default_control_layers`. Control block ``n`` belongs to
        backbone layer ``control_layers[n]`` (the reference's files number blocks by ``n``).
      control_in_channels: channels of the control input; None -> ``2 * dit.in_channels``
        (readout || score latent, 96 for Wan2.2). ``dit.in_channels + 1`` (readout || hole mask)
        is the other variant; anything else raises.
      hint_scale: multiplier of every hint (the reference's ``context_scale``, 1.0).
      lora_rank: LoRA rank r on the backbone (0: no LoRA).
      lora_alpha: LoRA alpha; the update is ``alpha / r * x @ A @ B`` (training scale).
      lora_targets: Dense layers of every backbone block to adapt, as paths inside a
        :class:`WanBlock` (keys of :data:`REFERENCE_TARGET_NAMES`); default all 10.
      lora_dropout: dropout rate on the LoRA input during training.
      control_init: ``"reference"`` (after_proj zero, everything else random, as the release)
        or ``"copy"`` (after_proj zero, control block ``n`` a copy of backbone block
        ``control_layers[n]``; see :func:`~mirage_jax.models.mirage.copy_backbone_into_control`).
    """

    dit: WanDiTConfig = dataclasses.field(default_factory=WanDiTConfig.wan22_ti2v_5b)
    control_layers: tuple[int, ...] | None = None
    control_in_channels: int | None = None
    hint_scale: float = 1.0
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_dropout: float = 0.05
    control_init: str = "reference"

    def __post_init__(self):
        if not isinstance(self.dit, WanDiTConfig):
            raise ConfigError(f"MirageConfig.dit must be a WanDiTConfig, got {type(self.dit).__name__}")
        n = self.dit.num_layers
        if self.dit.patch_size[0] != 1:
            raise ConfigError(
                f"MirageConfig: the backbone's temporal patch size is {self.dit.patch_size[0]}; per-frame "
                "timesteps and frame-wise reference / preceding tokens need 1 (as Wan2.1 / Wan2.2)"
            )
        layers = default_control_layers(n) if self.control_layers is None else self.control_layers
        try:
            layers = tuple(int(k) for k in layers)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"MirageConfig.control_layers must be a sequence of ints, got {self.control_layers!r}") from e
        if not layers:
            raise ConfigError(f"MirageConfig.control_layers is empty (backbone of {n} layers); give at least one layer")
        bad = [k for k in layers if not 0 <= k < n]
        if bad:
            raise ConfigError(f"MirageConfig.control_layers {list(layers)}: layers {bad} are outside the backbone's [0, {n})")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"MirageConfig.control_layers {list(layers)} repeats a layer")
        if list(layers) != sorted(layers):
            raise ConfigError(f"MirageConfig.control_layers {list(layers)} must be in increasing order")
        object.__setattr__(self, "control_layers", layers)

        c_in = self.dit.in_channels
        cc = 2 * c_in if self.control_in_channels is None else int(self.control_in_channels)
        if cc not in (2 * c_in, c_in + 1):
            raise ConfigError(
                f"MirageConfig.control_in_channels={self.control_in_channels}: the control input is readout || score "
                f"latent ({2 * c_in} channels) or readout || hole mask ({c_in + 1}) for a backbone with {c_in} latent "
                "channels"
            )
        object.__setattr__(self, "control_in_channels", cc)

        if not math.isfinite(float(self.hint_scale)):
            raise ConfigError(f"MirageConfig.hint_scale must be finite, got {self.hint_scale!r}")
        if int(self.lora_rank) != self.lora_rank or self.lora_rank < 0:
            raise ConfigError(f"MirageConfig.lora_rank must be an int >= 0 (0 = no LoRA), got {self.lora_rank!r}")
        object.__setattr__(self, "lora_rank", int(self.lora_rank))
        if self.lora_rank > 0 and not (math.isfinite(float(self.lora_alpha)) and self.lora_alpha > 0):
            raise ConfigError(f"MirageConfig.lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ConfigError(f"MirageConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        targets = (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)
        unknown = [t for t in targets if t not in REFERENCE_TARGET_NAMES]
        if unknown:
            raise ConfigError(
                f"MirageConfig.lora_targets {unknown} match no Dense layer of a WanBlock; choose from "
                f"{list(REFERENCE_TARGET_NAMES)}"
            )
        if len(set(targets)) != len(targets):
            raise ConfigError(f"MirageConfig.lora_targets {list(targets)} repeats a target")
        if self.lora_rank > 0 and not targets:
            raise ConfigError("MirageConfig.lora_targets is empty while lora_rank > 0")
        object.__setattr__(self, "lora_targets", targets)
        if self.control_init not in _CONTROL_INITS:
            raise ConfigError(f"MirageConfig.control_init={self.control_init!r}; choose one of {list(_CONTROL_INITS)}")

    @property
    def num_control_blocks(self) -> int:
        return len(self.control_layers)

    @property
    def lora_scale(self) -> float:
        """``alpha / r`` (0 without LoRA)."""
        return float(self.lora_alpha) / self.lora_rank if self.lora_rank else 0.0

    @classmethod
    def tiny(cls, **overrides) -> "MirageConfig":
        """Test-sized: the tiny 2-layer backbone with a control block after each layer."""
        kw = dict(dit=WanDiTConfig.tiny(), control_layers=(0, 1))
        kw.update(overrides)
        return cls(**kw)
