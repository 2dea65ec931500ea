"""A faster mask decoder for interactive clicks, equal to the official one at float tolerance.

Same weights and the same function as ``MaskDecoder.predict_masks`` (SAM 1 and SAM 2),
computed in another order, for one prompt set (batch 1) on CPU-friendly layouts:

- Prompt-independent work is done once per slice (:func:`slice_state`): image embedding
  + no-mask dense embedding, + positional encoding, and the first layer's image-side
  projections (token->image keys/values, image->token queries).
- With few tokens (T tokens, H heads, ``H * T`` < the attention's internal width) the
  image-side projections of the other layers are folded into the token side:
  ``softmax(q (x Wk' + bk)')`` only needs ``(q Wk) x'``; ``P (x Wv' + bv) = (P x) Wv' + bv``
  because the rows of ``P`` sum to 1; the image->token queries and output projection
  fold the same way. Image-sized products shrink from ``N x C x C/2`` to ``N x C x H*T``.
- The stride-2 transposed convolutions of the upscaling are per-pixel matmuls in a
  channels-last layout; masks are formed in that layout and reordered at the end
  (K masks are moved, not 32 channels).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def slice_state(decoder, image_embed, dense, image_pe, high_res=None, *, precompute: bool = True) -> dict[str, Any]:
    """The decoder's prompt-independent inputs for one slice.

    ``image_embed``, ``dense``: (1, C, h, w); ``image_pe``: (1, C, h, w) or already
    flattened to (h * w, C) (then shared, not copied); ``high_res``: SAM 2's
    ``[feat_s0, feat_s1]`` or None. ``precompute=False`` skips the first layer's
    projections (for a one-off dense input such as a mask prompt).
    """
    _, c, h, w = image_embed.shape
    x = (image_embed + dense)[0].reshape(c, h * w).t().contiguous()
    pe = image_pe if image_pe.dim() == 2 else image_pe[0].reshape(c, h * w).t().contiguous()
    xk = x + pe
    st: dict[str, Any] = {"x": x, "pe": pe, "xk": xk, "hw": (h, w), "k0": None, "v0": None, "q0": None}
    if precompute:
        layer = decoder.transformer.layers[0]
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        st["k0"] = F.linear(xk, t2i.k_proj.weight, t2i.k_proj.bias)
        st["v0"] = F.linear(x, t2i.v_proj.weight, t2i.v_proj.bias)
        st["q0"] = F.linear(xk, i2t.q_proj.weight, i2t.q_proj.bias)
    if high_res is not None:
        s0, s1 = high_res
        c1, c0 = s1.shape[1], s0.shape[1]
        # rows in the order the channels-last upscaling produces them (see _upscale_masks)
        (_, b1), (_, b2) = _upscale_weights(decoder)
        s1 = s1[0].reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 4 * c1)
        s0 = s0[0].reshape(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(h * w * 4, 4 * c0)
        st["s1b"], st["s0b"] = s1 + b1, s0 + b2
    return st


def with_dense(st: dict[str, Any], image_embed, dense) -> dict[str, Any]:
    """``st`` with another dense embedding (a mask prompt): positional and high-res parts reused."""
    _, c, h, w = image_embed.shape
    x = (image_embed + dense)[0].reshape(c, h * w).t().contiguous()
    return {**st, "x": x, "xk": x + st["pe"], "k0": None, "v0": None, "q0": None}


def decode(decoder, st: dict[str, Any], sparse) -> tuple[torch.Tensor, torch.Tensor]:
    """All mask tokens' low-res logits (1, M, 4h, 4w) and IoU predictions (1, M), as
    ``predict_masks`` returns them (before the multimask selection)."""
    tr = decoder.transformer
    s, fixed = _output_tokens(decoder)
    tokens = torch.cat([fixed, sparse[0].to(fixed.dtype)], dim=0)[None]  # (1, T, C)
    q, qpe = tokens, tokens
    keys, xk = st["x"], st["xk"]
    for i, layer in enumerate(tr.layers):
        q = _self_attention(layer, q, qpe)
        first = i == 0
        a = _token_to_image(layer.cross_attn_token_to_image, (q + qpe)[0], xk, keys,
                            st["k0"] if first else None, st["v0"] if first else None)
        q = layer.norm2(q + a[None])
        q = layer.norm3(q + layer.mlp(q))
        i2t = layer.cross_attn_image_to_token
        keys = layer.norm4(_image_to_token(i2t, keys, xk, (q + qpe)[0], q[0], st["q0"] if first else None))
        xk = keys + st["pe"]
    a = _token_to_image(tr.final_attn_token_to_image, (q + qpe)[0], xk, keys)
    q = tr.norm_final_attn(q + a[None])[0]
    iou = decoder.iou_prediction_head(q[s : s + 1])
    n = decoder.num_mask_tokens
    hyper = torch.stack([mlp(q[s + 1 + j]) for j, mlp in enumerate(decoder.output_hypernetworks_mlps[:n])])
    return _upscale_masks(decoder, st, keys, hyper)[None], iou


def _output_tokens(decoder):
    """(index of the IoU token, the (T0, C) output tokens: SAM 2's object-score token, IoU, masks)."""
    s = 1 if getattr(decoder, "pred_obj_scores", False) else 0
    parts = ([decoder.obj_score_token.weight] if s else []) + [decoder.iou_token.weight, decoder.mask_tokens.weight]
    return s, torch.cat(parts, dim=0)


def _self_attention(layer, q, qpe):
    """A two-way layer's token self-attention and its norm (the first layer skips the positional part)."""
    if layer.skip_first_layer_pe:
        q = layer.self_attn(q=q, k=q, v=q)
    else:
        qq = q + qpe
        q = q + layer.self_attn(q=qq, k=qq, v=q)
    return layer.norm1(q)


def _heads(attn):
    h = attn.num_heads
    return h, attn.internal_dim // h


def _token_to_image(attn, q_in, k_in, v_in, k=None, v=None):
    """``attn(q=q_in, k=k_in, v=v_in)`` for T queries on N image positions (2D inputs)."""
    H, d = _heads(attn)
    T, N, C = q_in.shape[0], k_in.shape[0], k_in.shape[1]
    q = F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias).view(T, H, d).transpose(0, 1)  # (H, T, d)
    q = q * (1.0 / math.sqrt(d))
    fold = H * T < attn.internal_dim
    if k is None and not fold:
        k = F.linear(k_in, attn.k_proj.weight, attn.k_proj.bias)
        v = F.linear(v_in, attn.v_proj.weight, attn.v_proj.bias)
    if k is not None:
        scores = torch.matmul(q, k.view(N, H, d).permute(1, 2, 0))  # (H, T, N)
    else:
        qw = torch.matmul(q, attn.k_proj.weight.view(H, d, C)).reshape(H * T, C)
        qb = (q * attn.k_proj.bias.view(H, 1, d)).sum(-1).reshape(H * T, 1)
        scores = torch.addmm(qb, qw, k_in.t()).view(H, T, N)
    p = torch.softmax(scores, dim=-1)
    if v is not None:
        out = torch.matmul(p, v.view(N, H, d).transpose(0, 1))  # (H, T, d)
    else:
        px = (p.reshape(H * T, N) @ v_in).view(H, T, C)
        out = torch.baddbmm(attn.v_proj.bias.view(H, 1, d), px, attn.v_proj.weight.view(H, d, C).transpose(1, 2))
    return F.linear(out.transpose(0, 1).reshape(T, H * d), attn.out_proj.weight, attn.out_proj.bias)


def _image_to_token(attn, residual, q_in, k_in, v_in, q=None):
    """``residual + attn(q=q_in, k=k_in, v=v_in)`` for N image positions attending to T tokens."""
    H, d = _heads(attn)
    N, C, T = q_in.shape[0], q_in.shape[1], k_in.shape[0]
    k = F.linear(k_in, attn.k_proj.weight, attn.k_proj.bias).view(T, H, d).transpose(0, 1)  # (H, T, d)
    k = k * (1.0 / math.sqrt(d))
    v = F.linear(v_in, attn.v_proj.weight, attn.v_proj.bias).view(T, H, d).transpose(0, 1)
    fold = H * T < attn.internal_dim
    if q is None and not fold:
        q = F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias)
    # scores laid out (H, T, N): the softmax over T then runs along contiguous N
    if q is not None:
        scores = torch.matmul(k, q.view(N, H, d).permute(1, 2, 0))
    else:
        kw = torch.matmul(k, attn.q_proj.weight.view(H, d, C)).reshape(H * T, C)
        kb = (attn.q_proj.bias.view(H, 1, d) * k).sum(-1).reshape(H * T, 1)
        scores = torch.addmm(kb, kw, q_in.t())
    p = torch.softmax(scores.view(H, T, N), dim=1)
    if fold:
        # out_proj folded into the values; its bias spread over the H heads (each head's
        # weights sum to 1), and the residual added by the same product
        vo = torch.matmul(v, attn.out_proj.weight.view(C, H, d).permute(1, 2, 0))  # (H, T, C)
        vo = (vo + attn.out_proj.bias / H).reshape(H * T, C)
        return torch.addmm(residual, p.view(H * T, N).t(), vo)
    out = torch.matmul(p.transpose(1, 2), v)  # (H, N, d)
    return residual + F.linear(out.transpose(0, 1).reshape(N, H * d), attn.out_proj.weight, attn.out_proj.bias)


def _upscale_weights(decoder):
    """ConvTranspose2d(k=2, s=2) weights as (Cin, 4*Cout) matrices, columns ordered (i, j, cout)."""
    dc1, dc2 = decoder.output_upscaling[0], decoder.output_upscaling[3]
    # rebuilt when the weights change (moved, loaded or edited in place)
    key = tuple((p.data_ptr(), p._version, p.device) for dc in (dc1, dc2) for p in (dc.weight, dc.bias))
    cached = getattr(decoder, "_nss_upscale", None)
    if cached is None or cached[0] != key:
        mats = []
        for dc in (dc1, dc2):
            wgt = dc.weight.detach()
            mats.append((wgt.permute(0, 2, 3, 1).reshape(wgt.shape[0], -1).contiguous(), dc.bias.detach().repeat(4)))
        cached = (key, mats)
        decoder._nss_upscale = cached
    return cached[1]


def _upscale_masks(decoder, st, keys, hyper):
    """``hyper @ output_upscaling(keys)`` as (M, 4h, 4w)."""
    h, w = st["hw"]
    dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
    (w1, b1), (w2, b2) = _upscale_weights(decoder)
    c1, c2 = dc1.out_channels, dc2.out_channels
    # the biases (and SAM 2's high-res features) enter as the addmm input
    y = torch.addmm(st.get("s1b", b1), keys, w1).view(-1, c1)  # rows (y, x, i, j)
    y = act1(F.layer_norm(y, (c1,), ln1.weight, ln1.bias, ln1.eps))
    z = torch.addmm(st.get("s0b", b2), y, w2).view(-1, c2)  # rows (y, x, i, j, k, l)
    z = act2(z)
    m = (z @ hyper.t()).view(h, w, 2, 2, 2, 2, -1)
    return m.permute(6, 0, 2, 4, 1, 3, 5).reshape(-1, 4 * h, 4 * w)


# ---------------------------------------------------------------- many prompts at once


def decode_batch(decoder, st: dict[str, Any], sparse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transformer part of :func:`decode` for B prompt sets with the same token count
    (``sparse``: (B, T, C), e.g. segment-everything's grid points), sharing one slice state.

    Returns the IoU predictions (B, M) of every mask token, their hypernetwork outputs
    (B, M, C') and the image-side keys (B, N, C); :func:`upscale_batch` turns the last two
    into low-res logits, for the prompts the caller still wants. Until the first
    image-to-token update the image side is the slice's (shared, never copied per prompt).
    """
    tr = decoder.transformer
    s, fixed = _output_tokens(decoder)
    tokens = torch.cat([fixed.expand(sparse.shape[0], -1, -1), sparse.to(fixed.dtype)], dim=1)  # (B, T, C)
    q, qpe = tokens, tokens
    keys, xk = st["x"], st["xk"]
    for i, layer in enumerate(tr.layers):
        q = _self_attention(layer, q, qpe)
        pre = (st["k0"], st["v0"], st["q0"]) if i == 0 else (None, None, None)
        q = layer.norm2(q + _tokens_attend_image(layer.cross_attn_token_to_image, q + qpe, xk, keys, *pre[:2]))
        q = layer.norm3(q + layer.mlp(q))
        keys = layer.norm4(_image_attends_tokens(layer.cross_attn_image_to_token, keys, xk, q + qpe, q, pre[2]))
        xk = keys + st["pe"]
    q = tr.norm_final_attn(q + _tokens_attend_image(tr.final_attn_token_to_image, q + qpe, xk, keys))
    iou = decoder.iou_prediction_head(q[:, s])
    n = decoder.num_mask_tokens
    hyper = torch.stack([mlp(q[:, s + 1 + j]) for j, mlp in enumerate(decoder.output_hypernetworks_mlps[:n])], dim=1)
    return iou, hyper, keys


def upscale_batch(decoder, st: dict[str, Any], keys, hyper) -> torch.Tensor:
    """Low-res logits (B, M', 4h, 4w) from :func:`decode_batch`'s ``keys`` (B, N, C) and
    ``hyper`` (B, M', C') (any subset of the mask tokens)."""
    h, w = st["hw"]
    dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
    (w1, b1), (w2, b2) = _upscale_weights(decoder)
    c1, c2, b = dc1.out_channels, dc2.out_channels, keys.shape[0]
    y = act1(F.layer_norm((keys @ w1 + st.get("s1b", b1)).view(b, -1, c1), (c1,), ln1.weight, ln1.bias, ln1.eps))
    z = act2((y @ w2 + st.get("s0b", b2).view(-1, 4 * c2)).view(b, -1, c2))  # rows (y, x, i, j, k, l)
    m = (z @ hyper.transpose(1, 2)).view(b, h, w, 2, 2, 2, 2, -1)
    return m.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, -1, 4 * h, 4 * w)


def _split_heads(t, heads: int, last: bool):
    """(..., N, H*d) -> (..., H, d, N) (``last``) or (..., H, N, d)."""
    t = t.unflatten(-1, (heads, -1))
    return t.movedim(-3, -1) if last else t.movedim(-3, -2)


def _tokens_attend_image(attn, q_in, k_in, v_in, k=None, v=None):
    """Batched ``attn(q=q_in, k=k_in, v=v_in)``: (B, T, C) tokens on an image side of (N, C)
    shared by the batch or (B, N, C); ``k``, ``v``: that side's projections, if known."""
    H, d = _heads(attn)
    b, t, _ = q_in.shape
    q = F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias).view(b, t, H, d).transpose(1, 2) / math.sqrt(d)
    if k is None and H * t >= attn.internal_dim:
        k = F.linear(k_in, attn.k_proj.weight, attn.k_proj.bias)
        v = F.linear(v_in, attn.v_proj.weight, attn.v_proj.bias)
    if k is not None:
        p = torch.softmax(q @ _split_heads(k, H, last=True), dim=-1)  # (B, H, T, N)
        out = p @ _split_heads(v, H, last=False)
    else:  # folded into the token side, as in _token_to_image
        c = k_in.shape[-1]
        qw = (q @ attn.k_proj.weight.view(H, d, c)).reshape(b, H * t, c)
        qb = (q * attn.k_proj.bias.view(H, 1, d)).sum(-1).reshape(b, H * t, 1)
        p = torch.softmax((qb + qw @ k_in.transpose(-1, -2)).view(b, H, t, -1), dim=-1)
        px = (p.reshape(b, H * t, -1) @ v_in).view(b, H, t, c)
        out = px @ attn.v_proj.weight.view(H, d, c).transpose(1, 2) + attn.v_proj.bias.view(H, 1, d)
    return F.linear(out.transpose(1, 2).reshape(b, t, H * d), attn.out_proj.weight, attn.out_proj.bias)


def _image_attends_tokens(attn, residual, q_in, k_in, v_in, q=None):
    """Batched ``residual + attn(q=q_in, k=k_in, v=v_in)``: an image side of (N, C) or
    (B, N, C) attending to (B, T, C) tokens; ``q``: the shared side's query projection."""
    H, d = _heads(attn)
    b, t, c = k_in.shape
    k = F.linear(k_in, attn.k_proj.weight, attn.k_proj.bias).view(b, t, H, d).transpose(1, 2) / math.sqrt(d)
    v = F.linear(v_in, attn.v_proj.weight, attn.v_proj.bias).view(b, t, H, d).transpose(1, 2)
    fold = H * t < attn.internal_dim
    if q is None and not fold:
        q = F.linear(q_in, attn.q_proj.weight, attn.q_proj.bias)
    if q is not None:
        scores = k @ _split_heads(q, H, last=True)  # (B, H, T, N)
    else:
        kw = (k @ attn.q_proj.weight.view(H, d, c)).reshape(b, H * t, c)
        kb = (k * attn.q_proj.bias.view(H, 1, d)).sum(-1).reshape(b, H * t, 1)
        scores = (kb + kw @ q_in.transpose(-1, -2)).view(b, H, t, -1)
    p = torch.softmax(scores, dim=2)
    if fold:  # out_proj folded into the values (see _image_to_token)
        vo = v @ attn.out_proj.weight.view(c, H, d).permute(1, 2, 0) + attn.out_proj.bias / H
        return residual + p.reshape(b, H * t, -1).transpose(1, 2) @ vo.reshape(b, H * t, c)
    out = p.transpose(-1, -2) @ v  # (B, H, N, d)
    return residual + F.linear(out.transpose(1, 2).flatten(2), attn.out_proj.weight, attn.out_proj.bias)
