"""SAM's prompt encoder + mask decoder, rearranged for speed, as the graph the ONNX backends export.

The same function as `MaskDecoder.predict_masks` with the same weights (a fresh export is checked against
eager before it is cached), with the arithmetic reordered for what a prompt is: a handful of tokens
(T ~ 7: IoU + 4 mask tokens + points/box corners) meeting 4096 image tokens.

- **Attention, reassociated.** SAM projects all 4096 image tokens to keys/values (or queries) in every
  cross-attention, although only ~7 tokens sit on the other side. Folding the small side into the weights
  first, `q (x Wk)^T = (q Wk) x^T` and `P (x Wv) = (P x) Wv`, turns each cross-attention into two GEMMs
  against the 256-wide image tokens with 8 heads x T columns, instead of projections to 128 plus per-head
  products: about 2.3x fewer multiply-adds, and no head transposes of image-sized tensors. (A key bias is
  constant along the softmax axis and drops out; a value bias passes through since softmax rows sum to 1.)
- **Upscaling on tokens.** The output upscaling runs on the transformer's (H*W, C) image tokens as they
  come: each stride-2 2x2 transposed convolution is one MatMul into 4 sub-pixels, LayerNorm2d becomes a
  LayerNormalization over the last axis (which ONNX Runtime fuses), and the one transpose left is that
  of the 4 output masks.

Measured on LiteMedSAM's decoder (ONNX Runtime, CPU): see docs/speed.md.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FastDecoderGraph"]


def _heads(attention: nn.Module) -> tuple[int, int]:
    return attention.num_heads, attention.internal_dim // attention.num_heads


def tokens_to_image(attention: nn.Module, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
    """SAM `Attention(q=queries (T, C), k=keys (N, C), v=values (N, C))` for few queries, large N."""
    heads, dim = _heads(attention)
    tokens, channels = queries.shape
    q = attention.q_proj(queries).reshape(tokens, heads, dim)
    q_into_keys = torch.einsum("thd,hdc->htc", q, attention.k_proj.weight.reshape(heads, dim, channels))
    logits = q_into_keys.reshape(heads * tokens, channels) @ keys.T / math.sqrt(dim)
    pooled = torch.softmax(logits, dim=-1) @ values                              # (heads * T, C)
    out = torch.einsum("htc,hdc->thd", pooled.reshape(heads, tokens, channels),
                       attention.v_proj.weight.reshape(heads, dim, channels))
    out = out + attention.v_proj.bias.reshape(heads, dim)
    return attention.out_proj(out.reshape(tokens, heads * dim))


def image_to_tokens(attention: nn.Module, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
    """SAM `Attention(q=queries (N, C), k=keys (T, C), v=values (T, C))` for large N, few keys."""
    heads, dim = _heads(attention)
    tokens, channels = keys.shape
    k = attention.k_proj(keys).reshape(tokens, heads, dim)
    weight_q = attention.q_proj.weight.reshape(heads, dim, channels)
    keys_into_q = torch.einsum("hdc,thd->cht", weight_q, k).reshape(channels, heads * tokens) / math.sqrt(dim)
    bias = torch.einsum("hd,thd->ht", attention.q_proj.bias.reshape(heads, dim), k).reshape(-1) / math.sqrt(dim)
    logits = (queries @ keys_into_q + bias).reshape(-1, heads, tokens)
    weights = torch.softmax(logits, dim=-1).reshape(-1, heads * tokens)
    v = attention.v_proj(values).reshape(tokens, heads, dim)
    v_out = torch.einsum("thd,chd->htc", v, attention.out_proj.weight.reshape(channels, heads, dim))
    return weights @ v_out.reshape(heads * tokens, channels) + attention.out_proj.bias


class FastDecoderGraph(nn.Module):
    """(image_embeddings + dense prompt embedding, point_coords, point_labels) -> (4 low-res mask logits,
    their predicted IoU). Points as in SAM's official ONNX decoder (`SamOnnxModel`'s prompt embedding:
    labels -1 padding, 0/1 points, 2/3 box corners); the dense (mask prompt) embedding is added by the
    caller, so that the usual no-mask case does not pay for the mask downscaling network."""

    def __init__(self, sam):
        super().__init__()
        from segment_anything.utils.onnx import SamOnnxModel

        self.prompts = SamOnnxModel(sam, return_single_mask=False)
        self.prompts.img_size = sam.prompt_encoder.input_image_size[0]  # prompt coordinates' frame
        self.decoder = sam.mask_decoder
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe()[0].flatten(1).T.contiguous())
        up1, norm, _, up2, _ = self.decoder.output_upscaling
        self.norm = norm
        for name, conv in (("up1", up1), ("up2", up2)):   # (Cin, Cout, 2, 2) -> (Cin, [dy, dx, Cout])
            self.register_buffer(f"{name}_weight", conv.weight.detach().permute(0, 2, 3, 1).reshape(
                conv.in_channels, 4 * conv.out_channels).clone())
            self.register_buffer(f"{name}_bias", conv.bias.detach().repeat(4).clone())

    def forward(self, image_embeddings, point_coords, point_labels):
        decoder = self.decoder
        sparse = self.prompts._embed_points(point_coords, point_labels)[0]
        side_h, side_w = image_embeddings.shape[-2:]
        image = image_embeddings[0].flatten(1).T                                 # (H*W, C) image tokens
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, sparse], dim=0)
        tokens, image = self._transformer(tokens, image, token_pe=tokens)
        hyper_in = torch.stack([mlp(tokens[1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)])
        masks = self._upscaled_masks(image, hyper_in, side_h, side_w)
        return masks, decoder.iou_prediction_head(tokens[0])[None]

    def _transformer(self, queries, keys, token_pe):
        """`TwoWayTransformer.forward` (its blocks as `TwoWayAttentionBlock.forward`) on (T, C) / (N, C)."""
        transformer, key_pe = self.decoder.transformer, self.image_pe
        for block in transformer.layers:
            if block.skip_first_layer_pe:
                queries = block.self_attn(q=queries[None], k=queries[None], v=queries[None])[0]
            else:
                q = queries + token_pe
                queries = queries + block.self_attn(q=q[None], k=q[None], v=queries[None])[0]
            queries = block.norm1(queries)
            keys_with_pe = keys + key_pe   # both cross-attentions of a block see the same keys
            queries = block.norm2(queries + tokens_to_image(block.cross_attn_token_to_image,
                                                            queries + token_pe, keys_with_pe, keys))
            queries = block.norm3(queries + block.mlp(queries))
            keys = block.norm4(keys + image_to_tokens(block.cross_attn_image_to_token,
                                                      keys_with_pe, queries + token_pe, queries))
        queries = queries + tokens_to_image(transformer.final_attn_token_to_image,
                                            queries + token_pe, keys + key_pe, keys)
        return transformer.norm_final_attn(queries), keys

    def _upscaled_masks(self, image_tokens, hyper_in, side_h, side_w):
        """(H*W, C) image tokens, (M, C/8) mask weights -> (1, M, 4H, 4W) low-res mask logits."""
        channels = self.up1_bias.shape[0] // 4
        x = (image_tokens @ self.up1_weight + self.up1_bias).reshape(-1, channels)     # rows (y, x, dy, dx)
        x = F.gelu(F.layer_norm(x, (channels,), self.norm.weight, self.norm.bias, self.norm.eps))
        x = F.gelu(x @ self.up2_weight + self.up2_bias).reshape(-1, self.up2_bias.shape[0] // 4)  # .., ey, ex
        masks = (x @ hyper_in.T).reshape(side_h, side_w, 2, 2, 2, 2, -1)
        # row = 4y + 2dy + ey, column = 4x + 2dx + ex
        return masks.permute(6, 0, 2, 4, 1, 3, 5).reshape(1, -1, 4 * side_h, 4 * side_w)
