"""The Mirage model: Wan DiT + VACE control branch + LoRA (spec sections 3 and 10).

    from mirage_jax.models.mirage import MirageConfig, MirageModel, LoRAParam, trainable_filter, score_latent
"""

from mirage_jax.models.mirage.config import (  # noqa: F401
    DEFAULT_TARGETS,
    REFERENCE_TARGET_NAMES,
    MirageConfig,
    default_control_layers,
)
from mirage_jax.models.mirage.lora import (  # noqa: F401
    LoRADense,
    LoRAIndex,
    LoRAParam,
    lora_dropout_key,
    merge_lora,
    unmerge_lora,
)
from mirage_jax.models.mirage.model import (  # noqa: F401
    ControlBranch,
    MirageModel,
    copy_backbone_into_control,
    mirage_positions,
    trainable_filter,
)
from mirage_jax.models.mirage.score import clear_score_cache, score_latent  # noqa: F401
