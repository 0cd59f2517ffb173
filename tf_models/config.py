"""VideoMAE architectures as data: pure Python, no keras, no torch.

The Keras model, the PyTorch reference and the converter all read this one table. It must
import without keras (the converter reads it before tensorflow may load, see
`converter/variants.py`), so it imports nothing from this package.

The head count cannot be read from a checkpoint (qkv is [3*dim, dim] for any count), which
is why the table, not tensor shapes, says what a variant is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

PATCH_SIZE = 16
TUBELET_SIZE = 2
NUM_FRAMES = 16
IMAGE_SIZE = 224
IN_CHANNELS = 3
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to build one VideoMAE network, in either framework."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = PATCH_SIZE
    tubelet_size: int = TUBELET_SIZE
    num_frames: int = NUM_FRAMES
    image_size: int = IMAGE_SIZE
    in_channels: int = IN_CHANNELS
    num_classes: int = 400
    # Optional forms of the official fine-tuning model.
    use_mean_pooling: bool = True
    layer_scale: bool = False  # blocks.{i}.gamma_1 / gamma_2 present
    learnable_pos_embed: bool = False
    # The headless backbone ends in `norm`; False for transformers' VideoMAEModel with
    # use_mean_pooling, whose last_hidden_state is the last block's output, un-normalised.
    final_norm: bool = True
    # Pre-training (masked autoencoder) decoder; decoder_depth 0 means "fine-tuned classifier".
    decoder_embed_dim: int = 0
    decoder_depth: int = 0
    decoder_num_heads: int = 0
    mask_ratio: float = 0.9
    # LayerNorm eps, as the checkpoint's own code computes: the official code uses 1e-6
    # everywhere; transformers uses config.layer_norm_eps (1e-12 on the hub) in the blocks and
    # the encoder's final norm, and PyTorch's default 1e-5 in fc_norm and the decoder's norm.
    layer_norm_eps: float = LAYER_NORM_EPS  # blocks (encoder and decoder), `norm`, `encoder.norm`
    head_norm_eps: float = LAYER_NORM_EPS  # `fc_norm`, `decoder.norm`

    def __post_init__(self):
        problem = self.shape_problem()
        if problem:
            raise ValueError(problem)

    def shape_problem(self) -> str | None:
        """Why this clip shape cannot be cut into tubelets, or None."""
        if self.num_frames < self.tubelet_size or self.num_frames % self.tubelet_size:
            return (f"{self.num_frames} frames cannot be cut into tubelets of {self.tubelet_size}: "
                    f"use a positive multiple of {self.tubelet_size}")
        if self.image_size < self.patch_size or self.image_size % self.patch_size:
            return (f"image size {self.image_size} cannot be cut into {self.patch_size}x{self.patch_size} patches: "
                    f"use a positive multiple of {self.patch_size}")
        return None

    @property
    def grid(self) -> tuple[int, int, int]:
        return (
            self.num_frames // self.tubelet_size,
            self.image_size // self.patch_size,
            self.image_size // self.patch_size,
        )

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def decoder_mlp_dim(self) -> int:
        return int(self.decoder_embed_dim * self.mlp_ratio)

    @property
    def patch_pixels(self) -> int:
        """Reconstruction target size of one token: 3 * 2 * 16 * 16 = 1536."""
        return self.in_channels * self.tubelet_size * self.patch_size**2

    @property
    def num_masked(self) -> int:
        """Tokens hidden by tube masking: a whole number per frame, repeated over time."""
        t, h, w = self.grid
        return t * int(self.mask_ratio * h * w)

    @property
    def num_visible(self) -> int:
        return self.num_patches - self.num_masked

    @property
    def num_params(self) -> int:
        """Parameter count, for memory planning and reports."""
        def blocks(dim, depth, mlp):
            per_block = 4 * dim + 3 * dim * dim + 2 * dim + dim * dim + dim + 2 * dim * mlp + mlp + dim
            return depth * (per_block + (2 * dim if self.layer_scale else 0))
        n = self.patch_pixels * self.embed_dim + self.embed_dim
        n += blocks(self.embed_dim, self.depth, self.mlp_dim) + 2 * self.embed_dim
        if self.learnable_pos_embed:
            n += self.num_patches * self.embed_dim
        if self.is_pretrain:
            d = self.decoder_embed_dim
            n += self.embed_dim * d + d + blocks(d, self.decoder_depth, self.decoder_mlp_dim) + 2 * d
            n += d * self.patch_pixels + self.patch_pixels
        else:
            n += self.embed_dim * self.num_classes + self.num_classes
        return n

    @property
    def is_pretrain(self) -> bool:
        return self.decoder_depth > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "ArchConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class Variant:
    name: str
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_num_heads: int
    decoder_depth: int
    patch_size: int = PATCH_SIZE
    # Upstream computes hidden sizes as int(dim * mlp_ratio). ViT-g's ratio is 48/11 exactly:
    # int(1408 * 48/11) = 6144 and int(512 * 48/11) = 2234, where a rounded 4.3636 gives 6143.
    mlp_ratio: float = 4.0


# VideoMAE (MCG-NJU). Decoder depth: 4 for S/B, 12 for L/H (the released pretrain.sh scripts).
VARIANTS: dict[str, Variant] = {
    "S": Variant("S", 384, 12, 6, 192, 3, 4),
    "B": Variant("B", 768, 12, 12, 384, 6, 4),
    "L": Variant("L", 1024, 24, 16, 512, 8, 12),
    "H": Variant("H", 1280, 32, 16, 640, 8, 12),
}

# VideoMAE V2 (OpenGVLab/VideoMAEv2 models/*.py): the same encoders, ViT-H's decoder is 512 wide
# (v1: 640), every pretrain script passes --decoder_depth 4, and ViT-g/14 is new.
V2_VARIANTS: dict[str, Variant] = {
    "S": Variant("S", 384, 12, 6, 192, 3, 4),
    "B": Variant("B", 768, 12, 12, 384, 6, 4),
    "L": Variant("L", 1024, 24, 16, 512, 8, 4),
    "H": Variant("H", 1280, 32, 16, 512, 8, 4),
    "G": Variant("G", 1408, 40, 16, 512, 8, 4, patch_size=14, mlp_ratio=48 / 11),
}


@dataclass(frozen=True)
class Dataset:
    key: str  # CLI spelling
    label: str  # spelling in release artifact names
    num_classes: int
    mask_ratio: float
    sampling_rate: int


DATASETS: dict[str, Dataset] = {
    "k400": Dataset("k400", "K400", 400, 0.9, 4),
    "ssv2": Dataset("ssv2", "SSv2", 174, 0.9, 2),
    "ucf101": Dataset("ucf101", "UCF", 101, 0.75, 4),
    # VideoMAE V2 only
    "k710": Dataset("k710", "K710", 710, 0.9, 4),
    "k600": Dataset("k600", "K600", 600, 0.9, 4),
    "hmdb51": Dataset("hmdb51", "HMDB51", 51, 0.9, 2),
    "hybrid": Dataset("hybrid", "Hybrid", 0, 0.9, 4),  # UnlabeledHybrid: pre-training only
}

STAGES = ("ft", "pt")


@dataclass(frozen=True)
class Generation:
    """A release line of checkpoints: its own variant table, datasets and artifact names."""

    key: str  # "v1", "v2"
    title: str
    artifact_prefix: str
    variants: dict
    finetune_datasets: tuple
    pretrain_datasets: tuple


GENERATIONS: dict[str, Generation] = {
    "v1": Generation("v1", "VideoMAE", "TFVideoMAE", VARIANTS, ("k400", "ssv2", "ucf101"), ("k400", "ssv2", "ucf101")),
    "v2": Generation("v2", "VideoMAE V2", "TFVideoMAE2", V2_VARIANTS,
                     ("k710", "k400", "k600", "ssv2", "ucf101", "hmdb51"), ("hybrid",)),
}


def get_generation(key: str) -> Generation:
    if key not in GENERATIONS:
        raise ValueError(f"unknown generation {key!r}; expected one of {', '.join(GENERATIONS)}")
    return GENERATIONS[key]


def generation_for(variant: str, dataset: str | None = None, stage: str = "ft") -> str | None:
    """The one generation that has this variant and dataset, or None where both have them."""
    fits = [g.key for g in GENERATIONS.values() if str(variant).upper() in g.variants
            and (dataset is None or str(dataset).lower() in (g.pretrain_datasets if stage == "pt"
                                                             else g.finetune_datasets))]
    return fits[0] if len(fits) == 1 else None


def arch_config(variant: str, dataset: str = "k400", stage: str = "ft", generation: str | None = None,
                **overrides) -> ArchConfig:
    """The official configuration of one zoo entry; overrides adapt it (tiny test models, frames...).
    generation "v1" (VideoMAE) or "v2" (VideoMAE V2); by default the one that has this variant
    and dataset, v1 where both have them: arch_config("G", "k710") is V2's ViT-g/14."""
    generation = generation or generation_for(variant, dataset, stage) or "v1"
    v = get_variant(variant, generation)
    d = get_dataset(dataset)
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    g = get_generation(generation)
    allowed = g.pretrain_datasets if stage == "pt" else g.finetune_datasets
    if d.key not in allowed:
        kind = "pre-trained" if stage == "pt" else "fine-tuned"
        raise ValueError(f"{g.title} has no {kind} {d.key} checkpoints; its {kind} datasets: {', '.join(allowed)}")
    fields = dict(embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads, num_classes=d.num_classes,
                  mask_ratio=d.mask_ratio, patch_size=v.patch_size, mlp_ratio=v.mlp_ratio)
    if stage == "pt":
        fields.update(num_classes=0, decoder_embed_dim=v.decoder_embed_dim, decoder_depth=v.decoder_depth,
                      decoder_num_heads=v.decoder_num_heads)
    return ArchConfig(**{**fields, **overrides})


def get_variant(name: str, generation: str = "v1") -> Variant:
    key = str(name).upper()
    g = get_generation(generation)
    if key not in g.variants:
        others = [o.title for o in GENERATIONS.values() if key in o.variants]
        hint = f" (ViT-{key} is {others[0]}'s: pass --family v2)" if others else ""
        raise ValueError(f"unknown {g.title} variant {name!r}; expected one of {', '.join(g.variants)}{hint}")
    return g.variants[key]


def get_dataset(name: str) -> Dataset:
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[key]
