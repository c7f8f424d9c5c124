"""Med-SA adapters (Wu et al., "Medical SAM Adapter") for segment_anything's `Sam`.

* `Adapter`: down-projection -> ReLU -> up-projection; the up-projection starts at zero, so an untrained
  adapter adds exactly nothing.
* Every transformer block of the image encoder (segment_anything's ViT `Block` and TinyViT's
  `TinyViTBlock`) is replaced by a wrapper that re-implements the block's forward with two adapters
  (after attention, skip-connected; beside the MLP, scaled) and, optionally, **SD-Trans**: the block's own
  attention weights applied along depth (a batch of D images is one slab of D slices; tokens and slices
  are transposed so each token attends to itself in the other slices), added to the spatial branch
  through a third, zero-initialised adapter.
* **HyP-Adpt**: in each two-way block of the mask decoder, the prompt embedding goes through an MLP that
  emits per-sample weight matrices, applied (3 layers, LayerNorm + ReLU) to the adapter's reduced
  embedding of the image tokens; zero-initialised output.

The wrappers adopt the wrapped block's own submodules under the same names, so the base model's state
dict keys are unchanged and the adapters only add keys.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segment_anything.modeling.image_encoder import window_partition, window_unpartition

from ..errors import CheckpointError
from ..models.sam import encoder_slab_depth

FORMAT = "sonosam-medsa-adapters"
FORMAT_VERSION = 1

DEFAULT_CONFIG: dict[str, Any] = {
    "depth_attention": True,   # SD-Trans
    "hyp_adapter": True,       # HyP-Adpt in the mask decoder
    "reduction": 24,           # adapter hidden width = max(min_hidden, dim // reduction)
    "min_hidden": 8,
    "mlp_scale": 0.5,          # scale of the adapter beside the MLP
    "hyp_hidden": 16,          # HyP-Adpt reduced width
    "hyp_layers": 3,
    "hyp_mlp_hidden": 64,      # hidden width of the MLP that makes the weight matrices
    "slab_depth": 4,           # slices that SD-Trans sees together, in training and in inference
}


# --------------------------------------------------------------------------------------------- modules
class Adapter(nn.Module):
    """x -> up(relu(down(x))) * scale (+ x when `skip`). Zero-initialised up-projection."""

    def __init__(self, dim: int, hidden: int, scale: float = 1.0, skip: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.up = nn.Linear(hidden, dim)
        self.scale = scale
        self.skip = skip
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.act(self.down(x))) * self.scale
        return x + out if self.skip else out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, skip={self.skip}"


class HyPAdapter(nn.Module):
    """Hyper-prompting adapter: returns a (zero at init) residual for x (B, N, C) given prompts (B, P)."""

    def __init__(self, dim: int, prompt_dim: int, hidden: int = 16, layers: int = 3, mlp_hidden: int = 64) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.down = nn.Linear(dim, hidden)
        self.hyper = nn.Sequential(nn.Linear(prompt_dim, mlp_hidden), nn.ReLU(),
                                   nn.Linear(mlp_hidden, layers * hidden * hidden))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        weights = self.hyper(prompt).view(b, self.layers, self.hidden, self.hidden) / math.sqrt(self.hidden)
        z = F.relu(self.down(x))
        for i, norm in enumerate(self.norms):
            z = F.relu(norm(torch.bmm(z, weights[:, i])))
        return self.up(z)


def _hidden(dim: int, cfg: dict) -> int:
    return max(int(cfg["min_hidden"]), dim // int(cfg["reduction"]))


def _adopt(wrapper: nn.Module, block: nn.Module, attrs: tuple[str, ...]) -> None:
    """Register the block's children under the same names (state dict keys stay the same)."""
    for name, child in block.named_children():
        wrapper.add_module(name, child)
    for name in attrs:
        setattr(wrapper, name, getattr(block, name))
    wrapper.training = block.training


def _depth_attention_vit(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment_anything ViT `Attention` weights as plain MHSA over (N, D, C) sequences (no rel-pos)."""
    n, d, c = x.shape
    qkv = attn.qkv(x).reshape(n, d, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(n, d, -1))


def _depth_attention_tiny(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT `Attention` weights (its own norm, qkv, proj) over (N, D, C) sequences, without the
    window-position attention biases (they are defined for the spatial window only)."""
    n, d, _ = x.shape
    x = attn.norm(x)
    q, k, v = attn.qkv(x).view(n, d, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=3)
    q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(n, d, attn.dh))


def _along_depth(x: torch.Tensor, fn) -> torch.Tensor:
    """x (D, *tokens, C), one slab of D slices -> fn over (tokens, D, C) sequences -> back to x's shape."""
    shape = x.shape
    seq = x.reshape(shape[0], -1, shape[-1]).transpose(0, 1)       # (T, D, C)
    return fn(seq).transpose(0, 1).reshape(shape)


class MedSAViTBlock(nn.Module):
    """segment_anything `Block` with Med-SA adapters. Input (B, H, W, C); a batch is one slab."""

    def __init__(self, block: nn.Module, cfg: dict) -> None:
        super().__init__()
        _adopt(self, block, ("window_size",))
        dim = block.norm1.normalized_shape[0]
        hidden = _hidden(dim, cfg)
        self.space_adapter = Adapter(dim, hidden, skip=True)
        self.mlp_adapter = Adapter(dim, hidden, scale=float(cfg["mlp_scale"]))
        self.depth_adapter = Adapter(dim, hidden) if cfg["depth_attention"] else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        xn = self.norm1(x)
        h = xn
        if self.window_size > 0:
            height, width = h.shape[1], h.shape[2]
            h, pad_hw = window_partition(h, self.window_size)
        h = self.attn(h)
        if self.window_size > 0:
            h = window_unpartition(h, self.window_size, pad_hw, (height, width))
        h = self.space_adapter(h)
        if self.depth_adapter is not None:  # SD-Trans
            h = h + self.depth_adapter(_along_depth(xn, lambda s: _depth_attention_vit(self.attn, s)))
        x = shortcut + h
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.mlp_adapter(xn)


class MedSATinyViTBlock(nn.Module):
    """TinyViT `TinyViTBlock` with Med-SA adapters. Input (B, L, C); a batch is one slab."""

    def __init__(self, block: nn.Module, cfg: dict) -> None:
        super().__init__()
        _adopt(self, block, ("dim", "input_resolution", "num_heads", "window_size", "mlp_ratio"))
        hidden = _hidden(self.dim, cfg)
        self.space_adapter = Adapter(self.dim, hidden, skip=True)
        self.mlp_adapter = Adapter(self.dim, hidden, scale=float(cfg["mlp_scale"]))
        self.depth_adapter = Adapter(self.dim, hidden) if cfg["depth_attention"] else None

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        # TinyViTBlock.forward's attention part, unchanged
        H, W = self.input_resolution
        B, L, C = x.shape
        ws = self.window_size
        if H == ws and W == ws:
            return self.attn(x)
        x = x.view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_b > 0 or pad_r > 0:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        nH, nW = pH // ws, pW // ws
        x = x.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
        x = self.attn(x)
        x = x.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
        if pad_b > 0 or pad_r > 0:
            x = x[:, :H, :W].contiguous()
        return x.view(B, L, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, L, C = x.shape
        assert L == H * W, "input feature has wrong size"
        res_x = x
        h = self.space_adapter(self._window_attention(x))
        if self.depth_adapter is not None:  # SD-Trans (attn applies its own norm)
            h = h + self.depth_adapter(_along_depth(x, lambda s: _depth_attention_tiny(self.attn, s)))
        x = res_x + self.drop_path(h)
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.local_conv(x)
        x = x.view(B, C, L).transpose(1, 2)
        return x + self.drop_path(self.mlp(x)) + self.mlp_adapter(self.mlp.norm(x))


class MedSADecoderBlock(nn.Module):
    """segment_anything `TwoWayAttentionBlock` with HyP-Adpt on the image tokens (keys)."""

    def __init__(self, block: nn.Module, cfg: dict, num_output_tokens: int) -> None:
        super().__init__()
        _adopt(self, block, ("skip_first_layer_pe",))
        dim = block.norm1.normalized_shape[0]
        self.num_output_tokens = num_output_tokens
        self.hyp_adapter = HyPAdapter(dim, dim, int(cfg["hyp_hidden"]), int(cfg["hyp_layers"]),
                                      int(cfg["hyp_mlp_hidden"]))

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        # the prompt embedding: the prompt tokens' embeddings (query_pe holds the original tokens)
        prompt_tokens = query_pe[:, self.num_output_tokens:]
        if prompt_tokens.shape[1] == 0:
            prompt_tokens = query_pe
        keys = keys + self.hyp_adapter(keys, prompt_tokens.mean(dim=1))
        return queries, keys


# ------------------------------------------------------------------------- encoder, split in two parts
def _encoder_kind(encoder: nn.Module) -> str:
    if hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):
        return "vit"
    if hasattr(encoder, "layers") and hasattr(encoder, "patch_embed") and hasattr(encoder, "neck"):
        return "tinyvit"
    return "other"


def encoder_stem(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The encoder's part before its first transformer block (no adapters there, per image): patch
    embedding (+ position embedding) for the ViT, patch embedding + the conv layer for TinyViT.
    None for an encoder of another kind. `encoder_trunk(encoder, encoder_stem(encoder, x)) == encoder(x)`."""
    kind = _encoder_kind(encoder)
    if kind == "vit":
        x = encoder.patch_embed(x)
        return x + encoder.pos_embed if encoder.pos_embed is not None else x
    if kind == "tinyvit":
        return encoder.layers[0](encoder.patch_embed(x))
    return None


def encoder_trunk(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rest of the encoder (transformer blocks and neck) on `encoder_stem`'s output."""
    if _encoder_kind(encoder) == "vit":
        for block in encoder.blocks:
            x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))
    for layer in encoder.layers[1:]:
        x = layer(x)
    b, n, c = x.shape
    side = math.isqrt(n)  # TinyViT.forward_features hard-codes 64 x 64 tokens
    return encoder.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------ insertion
def _unwrap(model) -> nn.Module:
    """A segment_anything `Sam`, or a wrapper with `.sam` (sonosam.models.SamModel)."""
    sam = getattr(model, "sam", model)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        if not isinstance(getattr(sam, part, None), nn.Module):
            raise TypeError(f"Expected a segment_anything Sam (or a SonoSAM model with .sam); {type(model).__name__} "
                            f"has no {part}.")
    return sam


def _is_vit_block(m: nn.Module) -> bool:
    return type(m).__name__ == "Block" and all(hasattr(m, a) for a in ("norm1", "attn", "norm2", "mlp", "window_size"))


def _is_tinyvit_block(m: nn.Module) -> bool:
    return type(m).__name__ == "TinyViTBlock" and all(hasattr(m, a) for a in ("attn", "mlp", "local_conv"))


def _is_two_way_block(m: nn.Module) -> bool:
    return type(m).__name__ == "TwoWayAttentionBlock" and hasattr(m, "cross_attn_image_to_token")


def _replace(root: nn.Module, test, make) -> int:
    count = 0
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if test(child):
                parent._modules[name] = make(child)
                count += 1
    return count


def is_adapted(model) -> bool:
    return getattr(_unwrap(model), "medsa_config", None) is not None


def slab_depth(model) -> int:
    """How many neighbouring slices the model's encoder must see together: SD-Trans's slab depth, else 1
    (the rule lives with the model, `SamModel.slab_depth`; this takes a bare `Sam` too)."""
    return encoder_slab_depth(_unwrap(model))


def add_medsa_adapters(model, depth_attention: bool = True, hyp_adapter: bool = True, *, freeze: bool = True,
                       **options):
    """Insert Med-SA adapters into `model` (a `Sam` or a SonoSAM model wrapper) in place and return it.

    Two adapters per image-encoder block (plus SD-Trans when `depth_attention`), HyP-Adpt in the mask
    decoder's two-way blocks when `hyp_adapter`. Options: see `DEFAULT_CONFIG`. With `freeze` (default)
    only adapter parameters require grad afterwards. An untrained adapted model gives the base model's
    output exactly."""
    sam = _unwrap(model)
    if is_adapted(sam):
        raise ValueError("This model already has Med-SA adapters.")
    unknown = set(options) - set(DEFAULT_CONFIG)
    if unknown:
        raise TypeError(f"Unknown adapter options {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}.")
    cfg = dict(DEFAULT_CONFIG, depth_attention=bool(depth_attention), hyp_adapter=bool(hyp_adapter), **options)
    device = next(sam.parameters()).device
    blocks = _replace(sam.image_encoder, _is_vit_block, lambda b: MedSAViTBlock(b, cfg))
    blocks += _replace(sam.image_encoder, _is_tinyvit_block, lambda b: MedSATinyViTBlock(b, cfg))
    if blocks == 0:
        raise TypeError(f"No ViT or TinyViT transformer blocks found in {type(sam.image_encoder).__name__}; "
                        "Med-SA adapters support segment_anything's ImageEncoderViT and TinyViT.")
    if cfg["hyp_adapter"]:
        n_out = sam.mask_decoder.num_mask_tokens + 1
        if _replace(sam.mask_decoder, _is_two_way_block, lambda b: MedSADecoderBlock(b, cfg, n_out)) == 0:
            raise TypeError("No TwoWayAttentionBlock in the mask decoder; use hyp_adapter=False.")
    sam.to(device)
    sam.medsa_config = cfg
    if freeze:
        freeze_base(sam)
    if hasattr(model, "model_id") and model is not sam:  # embeddings of the base model are no longer valid
        model.model_id = f"{model.model_id}+medsa"
    if getattr(model, "backend", "eager") != "eager":
        # an exported ONNX graph is the base network: run the adapted modules themselves
        model.use_backend("eager")
    return model


def adapter_modules(model) -> dict[str, nn.Module]:
    return {name: m for name, m in _unwrap(model).named_modules() if isinstance(m, (Adapter, HyPAdapter))}


def adapter_parameter_names(model) -> list[str]:
    return [f"{name}.{p}" for name, m in adapter_modules(model).items() for p, _ in m.named_parameters()]


def freeze_base(model) -> None:
    """requires_grad only on adapter parameters."""
    sam = _unwrap(model)
    for p in sam.parameters():
        p.requires_grad_(False)
    for m in adapter_modules(sam).values():
        for p in m.parameters():
            p.requires_grad_(True)


class ParameterShare(NamedTuple):
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.2f} %)"


def trainable_share(model, verbose: bool = False) -> ParameterShare:
    """Count trainable (requires_grad) parameters against all parameters; print it when `verbose`."""
    params = list(_unwrap(model).parameters())
    share = ParameterShare(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    if verbose:
        print(share)
    return share


# -------------------------------------------------------------------------------------- save / load
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_info(model) -> dict[str, str | None]:
    """Base model name and checkpoint sha256, from a SonoSAM model wrapper when there is one."""
    spec = getattr(model, "spec", None)
    checkpoint = getattr(model, "checkpoint", None)
    info = getattr(_unwrap(model), "medsa_base", None) or {}
    name = getattr(spec, "name", None) or info.get("name")
    sha = info.get("sha256")
    if sha is None and checkpoint is not None and Path(checkpoint).is_file():
        sha = _sha256(Path(checkpoint))
        _unwrap(model).medsa_base = {"name": name, "sha256": sha}
    return {"name": name, "sha256": sha}


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    sam = _unwrap(model)
    state = sam.state_dict()
    return {k: state[k].detach().cpu().clone() for k in adapter_parameter_names(sam)}


def save_adapters(model, path, *, base_name: str | None = None, base_sha256: str | None = None) -> Path:
    """Write only the adapter weights plus metadata (base model name, base checkpoint sha256, config)."""
    sam = _unwrap(model)
    if not is_adapted(sam):
        raise ValueError("This model has no Med-SA adapters to save; call add_medsa_adapters first.")
    info = base_info(model)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base_model": base_name or info["name"],
        "base_sha256": base_sha256 or info["sha256"],
        "config": dict(sam.medsa_config),
        "state_dict": adapter_state_dict(sam),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io.atomic import atomic_output

    with atomic_output(path, overwrite=True) as tmp:  # the command line decides about replacing (--overwrite)
        torch.save(payload, tmp)
    return path


def read_adapter_file(path) -> dict:
    """Load and validate an adapter file's structure (weights_only); raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Adapter file {path} does not exist.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors, unsafe globals
        raise CheckpointError(f"{path} is not a readable SonoSAM adapter file (truncated, corrupt, or not a "
                              f"weights-only torch file): {str(error).splitlines()[0][:200]}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = "a full model checkpoint" if isinstance(payload, dict) and any(
            str(k).startswith(("image_encoder.", "model")) for k in payload) else "something else"
        raise CheckpointError(f"{path} is not a SonoSAM Med-SA adapter file (it looks like {what}); adapter files "
                              "are written by `sonosam train adapters` / save_adapters().")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has adapter file version {payload.get('version')}; this SonoSAM reads "
                              f"version {FORMAT_VERSION}. Retrain the adapters or update SonoSAM.")
    if not isinstance(payload.get("state_dict"), dict) or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path} is an incomplete adapter file (no state_dict or config).")
    return payload


def load_adapters(model, path, *, check_base: bool = True):
    """Load adapter weights from `path` into `model` (adding the adapters if it has none yet) and return it.

    Raises CheckpointError when the file is missing, corrupt, not an adapter file, made for another base
    model (name, or checkpoint sha256 when both are known and `check_base`), or its tensors do not fit."""
    path = Path(path)
    payload = read_adapter_file(path)
    sam = _unwrap(model)
    if check_base:
        info = base_info(model)
        for key, what, mine in (("base_model", "base model", info["name"]),
                                ("base_sha256", "base checkpoint sha256", info["sha256"])):
            theirs = payload.get(key)
            if mine and theirs and mine != theirs:
                raise CheckpointError(f"{path} was trained with {what} {theirs!r}, but this model has {mine!r}; "
                                      "load the base model it was made for (or pass check_base=False).")
    config = {k: payload["config"][k] for k in DEFAULT_CONFIG if k in payload["config"]}
    if is_adapted(sam):
        mine = {k: sam.medsa_config[k] for k in config}
        if mine != config:
            raise CheckpointError(f"{path} has adapter configuration {config}, but this model's adapters have {mine}.")
    else:
        try:
            add_medsa_adapters(model, **config)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot build its adapters on this model: {error}") from error
    state = payload["state_dict"]
    expected = sam.state_dict()
    names = adapter_parameter_names(sam)
    missing = [k for k in names if k not in state]
    unexpected = [k for k in state if k not in names]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in names
             if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)]
    if missing or unexpected or wrong:
        details = "; ".join(part for part in (
            f"missing {len(missing)} (e.g. {missing[0]})" if missing else "",
            f"unexpected {len(unexpected)} (e.g. {unexpected[0]})" if unexpected else "",
            f"wrong shape {len(wrong)} (e.g. {wrong[0]})" if wrong else "") if part)
        raise CheckpointError(f"{path} does not fit this model's adapters ({details}); it was made for base model "
                              f"{payload.get('base_model')!r}.")
    with torch.no_grad():
        params = dict(sam.named_parameters())
        for k in names:
            params[k].copy_(state[k].to(params[k].device, params[k].dtype))
    if hasattr(model, "model_id") and model is not sam:
        model.model_id = f"{model.model_id.split('+medsa')[0]}+medsa:{_sha256(path)[:12]}"
    return model
