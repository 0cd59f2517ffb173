"""The Hugging Face transformers family: a folder with config.json and model.safetensors (or
pytorch_model.bin, or a sharded index), as on the MCG-NJU hub repos and as `save_pretrained`
writes it.

Its rule table reads one transformers key per line. Two differences from the official layout
need more than a rename: query/key/value are three [H, H] Linears that become the one fused
qkv kernel (engine.QKV_LINEAR, key bias never trained), and the q/v biases are spelled two
ways: `q_bias`/`v_bias` (the hub files, transformers 4.x, and transformers 5.24's
save_pretrained, which maps its modules' names back) and `query.bias`/`value.bias` (the
modules' own state dict, what transformers 5 releases before that mapping saved). Both read;
`q_bias`/`v_bias` are written, the spelling every transformers version loads.
The architecture comes from config.json, the numerics too (`layer_norm_eps` in the blocks,
PyTorch's default 1e-5 in fc_norm and decoder.norm); the reference is transformers' own model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import CONV3D, LINEAR, QKV_LINEAR, SAME, Rule
from ..errors import CheckpointError, VariantMismatchError

NAME = "hf"
GENERATION = None  # config.json states the architecture
MODEL_TYPE = "videomae"
CLASSIFIER, PRETRAINING, BACKBONE = "VideoMAEForVideoClassification", "VideoMAEForPreTraining", "VideoMAEModel"
ARCHITECTURES = (CLASSIFIER, PRETRAINING, BACKBONE)
# nn.LayerNorm(dim) without eps, as transformers builds fc_norm and decoder.norm.
TORCH_LAYER_NORM_EPS = 1e-5
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def block_rules(src: str, dst: str, reading: bool = True) -> list[Rule]:
    """One VideoMAELayer; `src`/`dst` carry the {i} index. reading: also the modules' own
    query.bias/value.bias spelling (one spelling per weight when writing)."""
    attn = f"{src}.attention.attention"
    rules = [
        Rule(f"{src}.layernorm_before.weight",        f"{dst}/norm1/gamma",       SAME),
        Rule(f"{src}.layernorm_before.bias",          f"{dst}/norm1/beta",        SAME),
        Rule((f"{attn}.query.weight", f"{attn}.key.weight", f"{attn}.value.weight"),
                                                      f"{dst}/attn/qkv/kernel",   QKV_LINEAR),
        Rule(f"{attn}.q_bias",                        f"{dst}/attn/q_bias",       SAME),  # hub, save_pretrained
        Rule(f"{attn}.v_bias",                        f"{dst}/attn/v_bias",       SAME),
        Rule(f"{src}.attention.output.dense.weight",  f"{dst}/attn/proj/kernel",  LINEAR),
        Rule(f"{src}.attention.output.dense.bias",    f"{dst}/attn/proj/bias",    SAME),
        Rule(f"{src}.layernorm_after.weight",         f"{dst}/norm2/gamma",       SAME),
        Rule(f"{src}.layernorm_after.bias",           f"{dst}/norm2/beta",        SAME),
        Rule(f"{src}.intermediate.dense.weight",      f"{dst}/mlp/fc1/kernel",    LINEAR),
        Rule(f"{src}.intermediate.dense.bias",        f"{dst}/mlp/fc1/bias",      SAME),
        Rule(f"{src}.output.dense.weight",            f"{dst}/mlp/fc2/kernel",    LINEAR),
        Rule(f"{src}.output.dense.bias",              f"{dst}/mlp/fc2/bias",      SAME),
    ]
    if reading:
        rules += [
            Rule(f"{attn}.query.bias",                f"{dst}/attn/q_bias",       SAME),  # module state dict
            Rule(f"{attn}.value.bias",                f"{dst}/attn/v_bias",       SAME),
        ]
    return rules


def encoder_rules(src: str, dst: str, reading: bool = True) -> list[Rule]:
    """VideoMAEModel under `src` ("videomae." inside the task models, "" alone) -> Keras `dst`."""
    return [
        Rule(f"{src}embeddings.patch_embeddings.projection.weight", f"{dst}patch_embed/proj/kernel", CONV3D),
        Rule(f"{src}embeddings.patch_embeddings.projection.bias",   f"{dst}patch_embed/proj/bias",   SAME),
        *block_rules(f"{src}encoder.layer.{{i}}", f"{dst}blocks_{{i}}", reading),
        Rule(f"{src}layernorm.weight",  f"{dst}norm/gamma",  SAME),  # use_mean_pooling=False
        Rule(f"{src}layernorm.bias",    f"{dst}norm/beta",    SAME),
    ]


def classifier_rules(reading: bool = True) -> list[Rule]:
    return [
        *encoder_rules("videomae.", "", reading),
        Rule("fc_norm.weight",     "fc_norm/gamma",   SAME),  # use_mean_pooling=True
        Rule("fc_norm.bias",       "fc_norm/beta",    SAME),
        Rule("classifier.weight",  "head/kernel",     LINEAR),
        Rule("classifier.bias",    "head/bias",       SAME),
    ]


def pretraining_rules(reading: bool = True) -> list[Rule]:
    return [
        Rule("videomae.embeddings.patch_embeddings.projection.weight", "encoder_patch_embed/proj/kernel", CONV3D),
        Rule("videomae.embeddings.patch_embeddings.projection.bias",   "encoder_patch_embed/proj/bias",   SAME),
        *block_rules("videomae.encoder.layer.{i}", "encoder_blocks_{i}", reading),
        Rule("videomae.layernorm.weight",   "encoder_norm/gamma",         SAME),
        Rule("videomae.layernorm.bias",     "encoder_norm/beta",          SAME),
        Rule("encoder_to_decoder.weight",   "encoder_to_decoder/kernel",  LINEAR),
        Rule("mask_token",                  "decoder_input/mask_token",   SAME),
        *block_rules("decoder.decoder_layers.{i}", "decoder_blocks_{i}", reading),
        Rule("decoder.norm.weight",         "decoder_norm/gamma",         SAME),
        Rule("decoder.norm.bias",           "decoder_norm/beta",          SAME),
        Rule("decoder.head.weight",         "decoder_head/kernel",        LINEAR),
        Rule("decoder.head.bias",           "decoder_head/bias",          SAME),
    ]


# A pre-training checkpoint's decoder, left behind when only its encoder is exported.
PRETRAINING_DECODER = ("encoder_to_decoder.", "mask_token", "decoder.")


def rules_for(architecture: str, encoder_only: bool = False, reading: bool = True) -> list[Rule]:
    """reading=False: the table that writes (one spelling per weight)."""
    if architecture == BACKBONE:
        return encoder_rules("", "", reading)
    if encoder_only:
        return encoder_rules("videomae.", "", reading)
    return pretraining_rules(reading) if architecture == PRETRAINING else classifier_rules(reading)


def architecture_of(cfg) -> str:
    return PRETRAINING if cfg.is_pretrain else CLASSIFIER


def rules(cfg, encoder_only: bool = False, architecture: str | None = None) -> list[Rule]:
    return rules_for(architecture or architecture_of(cfg), encoder_only)


def dropped(tensors: dict, encoder_only: bool) -> list[str]:
    return [k for k in tensors if k.startswith(PRETRAINING_DECODER)] if encoder_only else []


# -- what is on disk ----------------------------------------------------------------------------

def claims(path: Path, config: Path | None) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file()
    if config is not None or path.suffix == ".safetensors":
        return True
    # pytorch_model.bin in a hub folder: the config beside it says what it is.
    beside = path.parent / "config.json"
    return path.suffix == ".bin" and beside.is_file() and _model_type(beside) == MODEL_TYPE


def _model_type(config: Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class HFCheckpoint:
    """What a transformers folder holds: its tensors under their own keys and its config.json."""

    tensors: dict[str, np.ndarray]
    config: dict
    architecture: str
    weights: Path  # the file hashed in the report (the index for sharded weights)
    container: str  # "safetensors", "bin", "safetensors shards", ...
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str] | None:
        id2label = self.config.get("id2label")
        if not id2label or self.architecture != CLASSIFIER:
            return None
        return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]


def locate(path, config=None) -> tuple[Path, Path]:
    """(weights file, config.json) for a folder, or a file with its config given or beside it."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path} has a config.json but no weights ({', '.join(WEIGHT_FILES[::2])})")
        return found[0], Path(config) if config else path / "config.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    config = Path(config) if config else path.parent / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path} is a transformers weight file without its config.json: "
                              "pass --config path/to/config.json")
    return path, config


def read(path, config=None) -> HFCheckpoint:
    weights, config_path = locate(path, config)
    cfg = read_config(config_path)
    if weights.name.endswith(".index.json"):
        tensors, container = _read_shards(weights)
    elif weights.suffix == ".safetensors":
        tensors, container = _read_safetensors(weights), "safetensors"
    else:
        from ..checkpoint import read_checkpoint

        loaded = read_checkpoint(weights)  # torch.load(weights_only=True): nothing in it runs
        tensors, container = loaded.tensors, "bin"
    architecture = _architecture(cfg, tensors, config_path)
    return HFCheckpoint(tensors, cfg, architecture, weights, container)


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads(Path(path).read_text())
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != MODEL_TYPE:
        found = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise CheckpointError(f"{path} describes model_type {found!r}, not {MODEL_TYPE!r}: not a VideoMAE config")
    return cfg


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensor by tensor from the memory-mapped file (safe_open): never the whole file in memory
    at once, and nothing in it is code."""
    from safetensors import safe_open
    from safetensors import SafetensorError

    from ..checkpoint import unwrap

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or corrupt: "
                              f"{str(err).splitlines()[0][:200]})") from None
    return unwrap(state, str(path)).tensors  # the same dtype, finiteness and layout checks as .pth


def _read_shards(index: Path) -> tuple[dict[str, np.ndarray], str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a shard index ({type(err).__name__}: {err})") from None
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if shard_path.suffix == ".safetensors":
            part = _read_safetensors(shard_path)
        else:
            from ..checkpoint import read_checkpoint

            part = read_checkpoint(shard_path).tensors
        tensors.update(part)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f"{index} lists {len(missing)} tensors its shards do not hold ({missing[0]}, ...)")
    kind = "safetensors" if index.name.startswith("model.safetensors") else "bin"
    return tensors, f"{kind} shards"


def _architecture(cfg: dict, tensors: dict, config_path: Path) -> str:
    """What the weights are, from config.json `architectures` and from which keys exist; the two
    must agree."""
    if any(k.startswith("decoder.") for k in tensors) or "mask_token" in tensors:
        found = PRETRAINING
    elif any(k.startswith("videomae.") for k in tensors):
        found = CLASSIFIER
    elif any(k.startswith("embeddings.") for k in tensors):
        found = BACKBONE
    else:
        raise CheckpointError("no transformers VideoMAE keys (videomae.embeddings..., embeddings...) in the weights: "
                              "not a transformers VideoMAE checkpoint")
    named = [a for a in cfg.get("architectures") or [] if a in ARCHITECTURES]
    if named and named[0] != found:
        raise VariantMismatchError(f"{config_path} says {named[0]} but the weights are a {found}")
    return found


# -- config.json -> ArchConfig --------------------------------------------------------------------

def _field(cfg: dict, name: str, kind, default=None):
    value = cfg.get(name, default)
    if value is None or isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
        raise CheckpointError(f"config.json: {name} must be {kind.__name__}, got {value!r}")
    return value


def _mlp_ratio(hidden: int, intermediate: int, what: str) -> float:
    ratio = intermediate / hidden
    if int(hidden * ratio) != intermediate:
        raise CheckpointError(f"config.json: {what} {intermediate} is no whole multiple of width {hidden}")
    return ratio


def arch_config(ckpt: HFCheckpoint):
    """The ArchConfig config.json describes, at the file's numerics."""
    from ..variants import ArchConfig

    c = ckpt.config
    act = c.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: hidden_act {act!r}; the Keras model computes exact (erf) gelu only")
    qv_bias = c.get("qv_bias", c.get("qkv_bias", True))
    hidden = _field(c, "hidden_size", int, 768)
    fields = dict(
        embed_dim=hidden, depth=_field(c, "num_hidden_layers", int, 12),
        num_heads=_field(c, "num_attention_heads", int, 12),
        mlp_ratio=_mlp_ratio(hidden, _field(c, "intermediate_size", int, 3072), "intermediate_size"),
        patch_size=_field(c, "patch_size", int, 16), tubelet_size=_field(c, "tubelet_size", int, 2),
        num_frames=_field(c, "num_frames", int, 16), image_size=_field(c, "image_size", int, 224),
        in_channels=_field(c, "num_channels", int, 3),
        layer_norm_eps=float(_field(c, "layer_norm_eps", (int, float), 1e-12)),
        head_norm_eps=TORCH_LAYER_NORM_EPS,
        use_mean_pooling=_field(c, "use_mean_pooling", bool, True),
    )
    if hidden % fields["num_heads"]:
        raise CheckpointError(f"config.json: hidden_size {hidden} does not split into "
                              f"{fields['num_heads']} attention heads")
    if ckpt.architecture == PRETRAINING:
        if fields["use_mean_pooling"]:
            raise CheckpointError("config.json: a VideoMAEForPreTraining with use_mean_pooling=true has no encoder "
                                  "layernorm, which the Keras masked autoencoder applies: not supported")
        dec = _field(c, "decoder_hidden_size", int, 384)
        if _mlp_ratio(dec, _field(c, "decoder_intermediate_size", int, 1536), "decoder_intermediate_size") \
                != fields["mlp_ratio"]:
            raise CheckpointError("config.json: the decoder's MLP ratio differs from the encoder's; the Keras "
                                  "model uses one ratio for both")
        fields.update(num_classes=0, decoder_embed_dim=dec,
                      decoder_depth=_field(c, "decoder_num_hidden_layers", int, 4),
                      decoder_num_heads=_field(c, "decoder_num_attention_heads", int, 6), use_mean_pooling=False)
    elif ckpt.architecture == CLASSIFIER:
        head = ckpt.tensors.get("classifier.weight")
        labels = ckpt.labels
        fields["num_classes"] = len(labels) if labels else (int(head.shape[0]) if head is not None else 0)
    else:
        # transformers builds VideoMAEModel.layernorm only without mean pooling; with it, the
        # last hidden state is the last layer's output as it is.
        fields.update(num_classes=0, final_norm=not fields["use_mean_pooling"])
    try:
        arch = ArchConfig(**fields)
    except ValueError as err:
        raise CheckpointError(f"config.json: {err}") from None
    return arch, qv_bias


def complete_biases(ckpt: HFCheckpoint, arch, qv_bias: bool) -> None:
    """Refuse a file that lost its q/v biases; give a model trained without them zero ones.

    transformers 5 before its key renaming loaded hub files' `q_bias` as zeros without a word;
    a file saved from such a model has neither spelling, and converting it would silently
    drop trained biases."""
    keys = [k for k in ckpt.tensors if k.endswith((".q_bias", ".v_bias", "query.bias", "value.bias"))]
    query = ".attention.attention.query.weight"
    layers = [k[: -len(query)] for k in ckpt.tensors if k.endswith(query)]
    if qv_bias and not keys:
        raise CheckpointError("config.json says qkv_bias/qv_bias is true but the weights hold no q/v biases "
                              "(neither attention.attention.q_bias nor query.bias): a file saved after a lossy "
                              "load (transformers 5 read hub q_bias as zeros); use the original hub file")
    if not qv_bias and not keys:
        for layer in layers:
            width = ckpt.tensors[f"{layer}.attention.attention.query.weight"].shape[0]
            for name in ("query", "value"):
                ckpt.tensors[f"{layer}.attention.attention.{name}.bias"] = np.zeros(width, np.float32)
        ckpt.notes.append("config.json says qv_bias false: zero q/v biases given to the Keras model")


def head_count_note(arch) -> str | None:
    """The head count is in no weight: say when config.json and the official table disagree."""
    from ..variants import VARIANTS

    for v in VARIANTS.values():
        if (v.embed_dim, v.depth) == (arch.embed_dim, arch.depth) and v.num_heads != arch.num_heads:
            return (f"config.json has {arch.num_heads} attention heads where the official ViT-{v.name} has "
                    f"{v.num_heads}; parity followed config.json ({arch.num_heads}), which is what transformers "
                    f"computes with these weights")
    return None


def check_request(arch, architecture: str, variant=None, dataset=None, stage=None) -> None:
    """--variant/--dataset/--stage are optional for this family; given, they must agree with config.json."""
    from ..variants import get_dataset, get_variant, variant_for_width

    if variant is not None:
        v = get_variant(variant)
        found = variant_for_width(arch.embed_dim)
        if (v.embed_dim, v.depth) != (arch.embed_dim, arch.depth):
            raise VariantMismatchError(f"config.json describes width {arch.embed_dim}, depth {arch.depth} "
                                       f"({'ViT-' + found if found else 'no zoo variant'}), not ViT-{v.name}: "
                                       "drop --variant or pass the matching one")
    if stage is not None:
        found = "pt" if architecture == PRETRAINING else "ft"
        if stage != found:
            raise VariantMismatchError(f"config.json describes a {architecture} (stage {found}), not --stage {stage}")
    if dataset is not None and architecture == CLASSIFIER:
        d = get_dataset(dataset)
        if d.num_classes != arch.num_classes:
            raise VariantMismatchError(f"config.json has {arch.num_classes} labels, dataset {d.key} has "
                                       f"{d.num_classes}: drop --dataset or pass the matching one")


# -- the PyTorch side -------------------------------------------------------------------------------

def transformers_version() -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def hf_config(arch, architecture: str, raw: dict | None = None, labels=None):
    """A transformers VideoMAEConfig for `arch` (the clip shape may differ from the file's)."""
    from transformers import VideoMAEConfig

    fields = dict(hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                  intermediate_size=arch.mlp_dim, patch_size=arch.patch_size, tubelet_size=arch.tubelet_size,
                  num_frames=arch.num_frames, image_size=arch.image_size, num_channels=arch.in_channels,
                  layer_norm_eps=arch.layer_norm_eps, qv_bias=True,
                  # a backbone's use_mean_pooling says only whether it has a final layernorm
                  use_mean_pooling=(not arch.final_norm if architecture == BACKBONE
                                    else arch.use_mean_pooling and not arch.is_pretrain),
                  hidden_act="gelu", architectures=[architecture])
    if arch.is_pretrain:
        fields.update(decoder_hidden_size=arch.decoder_embed_dim, decoder_num_hidden_layers=arch.decoder_depth,
                      decoder_num_attention_heads=arch.decoder_num_heads,
                      decoder_intermediate_size=arch.decoder_mlp_dim,
                      norm_pix_loss=bool((raw or {}).get("norm_pix_loss", True)))
    if labels:
        fields.update(id2label={i: n for i, n in enumerate(labels)}, label2id={n: i for i, n in enumerate(labels)})
    elif architecture == CLASSIFIER:
        fields["num_labels"] = arch.num_classes
    config = VideoMAEConfig(**fields)
    config._attn_implementation = "eager"  # the written-out softmax(q k^T * scale) v, as the official code
    return config


def canonical(tensors: dict) -> dict:
    """Hub spelling -> the modules' own names, for a strict load_state_dict (q_bias -> query.bias);
    a test shows transformers' own from_pretrained builds the same model."""
    out = {}
    for key, value in tensors.items():
        for old, new in ((".attention.attention.q_bias", ".attention.attention.query.bias"),
                         (".attention.attention.v_bias", ".attention.attention.value.bias")):
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def build_transformers(arch, architecture: str, tensors: dict, raw: dict | None = None):
    """transformers' own model class for `architecture`, holding these tensors (strict load)."""
    import torch
    import transformers

    model = getattr(transformers, architecture)(hf_config(arch, architecture, raw)).eval()
    state = {k: torch.from_numpy(v) for k, v in canonical(tensors).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def write(tensors: dict, dest: Path, cfg, labels=None, architecture: str | None = None) -> list[Path]:
    """A folder transformers loads: config.json (this architecture, these numerics, the labels)
    and model.safetensors under the keys it saves."""
    from safetensors.numpy import save_file

    architecture = architecture or architecture_of(cfg)
    dest = Path(dest)
    dest.mkdir(parents=True)
    config = hf_config(cfg, architecture, labels=labels)
    config.to_json_file(dest / "config.json")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    return [dest / "config.json", dest / "model.safetensors"]


# -- what the pipeline calls ------------------------------------------------------------------------

REFERENCES = ("auto", "transformers", "pt_reference")


def default_name(checkpoint) -> str:
    """Artifacts are named after the hub repo / folder: its head count and numerics are its own,
    so it takes no release name of the official zoo."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in (folder.resolve().name or "videomae"))
    return f"TFVideoMAE_hf_{name}"


def load(opts):
    """(LoadedCheckpoint, weights path, ArchConfig, details) for the pipeline; details carries what
    the reference and the report need (architecture, labels, config.json)."""
    from ..checkpoint import LoadedCheckpoint

    ckpt = read(opts.checkpoint, opts.config_file)
    arch, qv_bias = arch_config(ckpt)
    complete_biases(ckpt, arch, qv_bias)
    check_request(arch, ckpt.architecture, **opts.expect)
    heads = head_count_note(arch)
    if heads:
        ckpt.notes.append(heads)
    details = {"architecture": ckpt.architecture, "labels": ckpt.labels, "config_json": ckpt.config,
               "heads_note": heads}
    loaded = LoadedCheckpoint(ckpt.tensors, str(ckpt.weights), ckpt.container, ckpt.notes)
    return loaded, ckpt.weights, arch, details


def reference(cfg, tensors: dict, details: dict, choice: str = "auto"):
    """The PyTorch model parity is proven against: transformers' own VideoMAE when installed, else
    `pt_reference` at the file's numerics (its keys reached through the Keras layout, by rule)."""
    if choice not in REFERENCES:
        raise CheckpointError(f"unknown reference {choice!r}; expected one of {', '.join(REFERENCES)}")
    version = transformers_version()
    architecture = details["architecture"]
    if choice == "transformers" and version is None:
        raise CheckpointError("--reference transformers: transformers is not installed (pip install '.[hf]')")
    if version is not None and choice != "pt_reference":
        from .hf_reference import TransformersReference

        details["reference"] = f"transformers {version} {architecture} (eager attention)"
        return TransformersReference(build_transformers(cfg, architecture, tensors, details.get("config_json")))
    if architecture == BACKBONE:
        raise CheckpointError("a headless VideoMAEModel is proven against transformers only: pip install '.[hf]'")
    import torch

    from ..engine import translate
    from . import official
    from pt_reference import load_reference

    why = "transformers is not installed" if version is None else "asked for"
    details["reference"] = (f"pt_reference at the file's numerics (layer_norm_eps {cfg.layer_norm_eps:g}, "
                            f"fc_norm/decoder.norm eps {cfg.head_norm_eps:g}): {why}")
    official_tensors = translate(tensors, rules(cfg), official.rules(cfg))
    return load_reference(cfg, {k: torch.from_numpy(v) for k, v in official_tensors.items()})


def report_fields(cfg, details: dict) -> dict:
    from ..variants import dataset_for_classes, variant_for_width

    architecture = details["architecture"]
    return {
        "family": NAME,
        "architecture": architecture,
        "variant": variant_for_width(cfg.embed_dim),
        "dataset": dataset_for_classes(cfg.num_classes) if architecture == CLASSIFIER else None,
        "stage": "pt" if architecture == PRETRAINING else "ft",
        "reference": details.get("reference"),
        "heads": {"config_json": cfg.num_heads, "note": details.get("heads_note")},
        "labels": details.get("labels"),
    }
