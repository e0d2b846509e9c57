"""QuantMultiheadAttention: nn.MultiheadAttention with its four projections in int8.

nn.MultiheadAttention keeps the q/k/v projection as a raw parameter (in_proj_weight) and
hands out_proj.weight straight to F.multi_head_attention_forward, so swapping Linears
cannot reach them. This module owns four QuantLinear projections instead and computes the
attention itself (scaled_dot_product_attention, or an explicit softmax when the weights
are asked for), with nn.MultiheadAttention's forward signature and mask rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _C
from .._validate import _FLOAT32_MAX
from ._base import INPUT_DTYPES, NotConvertibleError, QuantModuleBase, use_custom_op
from .linear import QuantLinear, _numpy

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _plain(m: nn.Module) -> bool:
    """No hooks would run on m's forward (so calling its kernel directly skips nothing)."""
    return not (m._forward_hooks or m._forward_pre_hooks
                or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _float_linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear around existing weight rows (no copy), for QuantLinear.from_float."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.detach(), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.detach(), requires_grad=False)
    return lin


def _check_tensor(name: str, x, *, mask: bool = False) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if mask and x.dtype != torch.bool and not x.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got {x.dtype}")
    if not mask and x.dtype not in INPUT_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in INPUT_DTYPES)
        raise TypeError(f"{name} must have one of the dtypes {names}, got {x.dtype}")
    if x.is_nested:  # TransformerEncoder makes them only on its fused path
        raise TypeError(f"{name}: nested tensors are not supported (set use_nested_tensor="
                        "False on the TransformerEncoder; quantize_dynamic does)")
    if not x.is_cpu:
        raise ValueError(f"{name} must be a CPU tensor (int8kit's kernels run on CPU), "
                         f"got device {x.device}")


def _unquantizable(name: str, x: torch.Tensor, per_row: bool) -> str | None:
    """Why dynamic activation quantization refuses x (as its projection sees it: rows of
    the last dimension), naming it; None if it does not."""
    x2 = x.detach().float().reshape(-1, x.shape[-1])
    if x2.numel() == 0:
        return None
    if not bool(torch.isfinite(x2).all()):
        return f"{name} contains NaN or Inf; its int8 projection cannot quantize it"
    lo, hi = torch.aminmax(x2, dim=1) if per_row else torch.aminmax(x2)
    wide = (hi.clamp(min=0) - lo.clamp(max=0)).isinf().reshape(-1)  # hi - lo overflows
    if not bool(wide.any()):
        return None
    i = int(wide.nonzero()[0])
    lo, hi = float(lo.reshape(-1)[i]), float(hi.reshape(-1)[i])
    whose = "a row's" if per_row else "its"
    return (f"{name}: {whose} range [{lo:.6g}, {hi:.6g}] is too wide for a float32 scale "
            f"(max(hi, 0) - min(lo, 0) must be at most {_FLOAT32_MAX:.6g})")


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """torch's mask convention: bool True = masked out (-inf), float = added to scores."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class QuantMultiheadAttention(QuantModuleBase):
    """nn.MultiheadAttention whose q, k, v and out projections are QuantLinear modules.

    Same constructor arguments and forward as nn.MultiheadAttention, plus the QuantLinear
    options (weight=, activation=, threads=). bias_k / bias_v (add_bias_kv) stay float32.

    in_proj_weight and in_proj_bias are None: the float in-projection does not exist any
    more. This is also what routes torch's TransformerEncoderLayer (and a TransformerEncoder
    built around one) away from its fused kernel, which reads those tensors as float, to
    its ordinary path that calls this module.

    NaN or Inf in query, key or value raise ValueError naming the argument (the int8
    projections cannot quantize them), as does NaN or +inf in a float mask (-inf masks out).

    Fully masked rows (key_padding_mask or attn_mask masking out every key for a query) give
    what nn.MultiheadAttention's ordinary path gives, row by row, and leave the other rows
    alone: with need_weights=True the softmax over no keys is NaN, so that query's weights
    and output row are NaN (the NaN rows skip the int8 out_proj, which refuses NaN, and are
    filled in after it); with need_weights=False torch's scaled_dot_product_attention
    decides: zeros in torch 2.13, so the output row is out_proj's bias (torch's inference
    fast path gives NaN there instead). Raising would fail the whole batch for one padded
    sequence, and a TransformerEncoder (need_weights=False) with a fully padded sequence
    keeps running through its int8 layers, which would refuse NaN rows.
    """

    _float32_buffers = ("bias_k", "bias_v")
    _owns_weight = False  # a container: the QuantLinear children hold the weights
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, *,
                 weight: str = "per_channel", activation: str = "per_row",
                 threads: int | None = None):
        super().__init__()
        self.embed_dim = _positive_int("embed_dim", embed_dim)
        self.num_heads = _positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.kdim = embed_dim if kdim is None else _positive_int("kdim", kdim)
        self.vdim = embed_dim if vdim is None else _positive_int("vdim", vdim)
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout!r}")
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)
        opts = {"weight": weight, "activation": activation, "threads": threads}
        self.q_proj = QuantLinear(embed_dim, embed_dim, bias, **opts)
        self.k_proj = QuantLinear(self.kdim, embed_dim, bias, **opts)
        self.v_proj = QuantLinear(self.vdim, embed_dim, bias, **opts)
        self.out_proj = QuantLinear(embed_dim, embed_dim, bias, **opts)
        kv = torch.zeros(1, 1, embed_dim) if add_bias_kv else None
        self.register_buffer("bias_k", kv)
        self.register_buffer("bias_v", None if kv is None else kv.clone())

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, *, weight: str = "per_channel",
                   activation: str = "per_row", threads: int | None = None
                   ) -> QuantMultiheadAttention:
        """Quantizes each projection of a float nn.MultiheadAttention once (biases,
        bias_k and bias_v stay float32)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"mha must be an nn.MultiheadAttention, got {type(mha).__name__}")
        opts = {"weight": weight, "activation": activation, "threads": threads}
        has_bias = mha.in_proj_bias is not None
        mod = cls(mha.embed_dim, mha.num_heads, mha.dropout, has_bias, mha.bias_k is not None,
                  mha.add_zero_attn, mha.kdim, mha.vdim, mha.batch_first, **opts)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if has_bias else (None,) * 3
        floats = [_float_linear(w, b) for w, b in zip(weights, biases)] + [mha.out_proj]
        for name, lin in zip(_PROJECTIONS, floats):
            try:
                setattr(mod, name, QuantLinear.from_float(lin, **opts))
            except NotConvertibleError as e:
                raise NotConvertibleError(f"{name}: {e}") from None
        if mha.bias_k is not None:
            mod.bias_k.copy_(mha.bias_k.detach().float())
            mod.bias_v.copy_(mha.bias_v.detach().float())
        return mod.train(mha.training)  # dropout follows the float module's mode

    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask):
        for name, x in (("query", query), ("key", key), ("value", value)):
            _check_tensor(name, x)
        if key.dtype != query.dtype or value.dtype != query.dtype:
            raise TypeError(f"query, key and value must have one dtype, got {query.dtype}, "
                            f"{key.dtype}, {value.dtype}")
        batched = query.dim() == 3
        layout = "[batch, seq, {}]" if self.batch_first else "[seq, batch, {}]"
        for name, x, dim in (("query", query, self.embed_dim), ("key", key, self.kdim),
                             ("value", value, self.vdim)):
            if query.dim() not in (2, 3) or x.dim() != query.dim() or x.shape[-1] != dim:
                raise ValueError(f"{name} must have shape {layout.format(dim)} (batched) or "
                                 f"[seq, {dim}] (unbatched), got {tuple(x.shape)}"
                                 + ("" if x is query else f" with query {tuple(query.shape)}"))
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must have the same batch and sequence sizes, got "
                             f"{tuple(key.shape)} and {tuple(value.shape)}")
        b_axis = 0 if self.batch_first else 1
        if batched and key.shape[b_axis] != query.shape[b_axis]:
            raise ValueError(f"key must have query's batch size {query.shape[b_axis]}, "
                             f"got {tuple(key.shape)}")
        bsz = query.shape[b_axis] if batched else 1
        tgt = query.shape[1 - b_axis] if batched else query.shape[0]
        src = key.shape[1 - b_axis] if batched else key.shape[0]
        if key_padding_mask is not None:
            _check_tensor("key_padding_mask", key_padding_mask, mask=True)
            want = (bsz, src) if batched else (src,)
            if tuple(key_padding_mask.shape) != want:
                raise ValueError(f"key_padding_mask must have shape {list(want)} "
                                 f"([batch, source length]), got {tuple(key_padding_mask.shape)}")
        if attn_mask is not None:
            _check_tensor("attn_mask", attn_mask, mask=True)
            if tuple(attn_mask.shape) not in ((tgt, src), (bsz * self.num_heads, tgt, src)):
                raise ValueError(f"attn_mask must have shape {[tgt, src]} or "
                                 f"{[bsz * self.num_heads, tgt, src]} ([batch * num_heads, "
                                 f"target, source]), got {tuple(attn_mask.shape)}")
        for name, m in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            # NaN scores would reach the int8 out_proj, which refuses them. (Not while
            # tracing: a data-dependent test breaks the graph; out_proj still raises.)
            if m is not None and m.is_floating_point() and not use_custom_op(m) and bool(
                    (m.isnan() | m.isposinf()).any()):
                raise ValueError(f"{name} contains NaN or +inf; a float mask is added to the "
                                 "attention scores (-inf masks a key out)")

    def _project(self, query, key, value):
        """The q, k and v projections; a value error names query, key or value (the
        kernels call their input x) when one of them cannot be quantized."""
        try:
            return self._project_all(query, key, value)
        except ValueError:
            # Checked only now: a pass over the inputs on every call would cost time.
            for name, x, p in (("query", query, self.q_proj), ("key", key, self.k_proj),
                               ("value", value, self.v_proj)):
                why = _unquantizable(name, x, p.activation_scheme == "per_row")
                if why:
                    raise ValueError(why) from None
            raise

    def _project_all(self, query, key, value):
        """The q, k and v projections. Self-attention in eager mode quantizes its one input
        once for all three (one native call; the same bits as three QuantLinear calls)."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if not (query is key and key is value) or use_custom_op(query) or not all(
                _plain(p) and p.activation_scheme == projs[0].activation_scheme
                and p.threads == projs[0].threads for p in projs):
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        x2 = query.reshape(-1, self.embed_dim)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        views = [p._kernel_views() for p in projs]
        outs = _C.linear_dynamic_multi(
            _numpy(x2), [v[0] for v in views], [v[1] for v in views], [v[2] for v in views],
            projs[0].activation_scheme == "per_row", projs[0].threads or torch.get_num_threads())
        return [torch.from_numpy(o).reshape(*query.shape[:-1], o.shape[1]).to(query.dtype)
                for o in outs]

    def _heads(self, x: torch.Tensor, batch_first: bool) -> torch.Tensor:
        """[batch, seq, E] (or [seq, batch, E]) -> [batch, heads, seq, head_dim], a view."""
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        return x.permute(0, 2, 1, 3) if batch_first else x.permute(1, 2, 0, 3)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True is a hint that attn_mask is the causal mask; "
                             "attn_mask must be given (nn.Transformer."
                             "generate_square_subsequent_mask makes one)")
        batched = query.dim() == 3
        if not batched:  # as a batch of one, batch first
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        bf = self.batch_first or not batched
        dtype = query.dtype
        kpm = _additive(key_padding_mask, dtype)
        # torch's rule: without a padding mask and weights, is_causal replaces the mask.
        causal = is_causal and kpm is None and not need_weights
        mask = None if causal else _additive(attn_mask, dtype)

        # Projections in the input's own layout (a reshape, no copy, for contiguous input).
        q, k, v = (self._heads(t, bf) for t in self._project(query, key, value))
        bsz, tgt = q.shape[0], q.shape[2]
        extra = []  # key/value columns appended after the source sequence
        if self.bias_k is not None:
            extra.append((self.bias_k, self.bias_v))
        if self.add_zero_attn:
            extra.append((None, None))
        for bk, bv in extra:
            shape = (bsz, self.num_heads, 1, self.head_dim)
            if bk is None:
                k = torch.cat([k, k.new_zeros(shape)], 2)
                v = torch.cat([v, v.new_zeros(shape)], 2)
            else:
                k = torch.cat([k, self._heads(bk.to(dtype), True).expand(shape)], 2)
                v = torch.cat([v, self._heads(bv.to(dtype), True).expand(shape)], 2)
            mask = None if mask is None else F.pad(mask, (0, 1))  # the new column: attended
            kpm = None if kpm is None else F.pad(kpm, (0, 1))
        src = k.shape[2]
        if mask is not None and mask.dim() == 3:  # [batch * heads, L, S], batch major
            mask = mask.view(bsz, self.num_heads, tgt, src)
        if kpm is not None:
            kpm = kpm.view(bsz, 1, 1, src)
            mask = kpm if mask is None else mask + kpm
        p = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            scores = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            w = scores.softmax(-1)
            if p > 0.0:
                w = F.dropout(w, p)  # the returned weights are the dropped ones, as torch's
            out = torch.matmul(w, v)
            weights = w.mean(1) if average_attn_weights else w
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, mask, p, causal)
        # [batch, heads, L, head_dim] -> the input's layout, heads merged
        out = out.permute(0, 2, 1, 3) if bf else out.permute(2, 0, 1, 3)
        out = out.flatten(-2)
        nan_rows = self._fully_masked_nan_rows(out, mask, bf)
        if nan_rows is None:
            out = self.out_proj(out)
        else:  # as float: NaN rows stay NaN; out_proj quantizes only the others
            out = self.out_proj(out.masked_fill(nan_rows, 0.0)).masked_fill(nan_rows, float("nan"))
        return (out if batched else out.squeeze(0)), weights

    def _fully_masked_nan_rows(self, out, mask, bf) -> torch.Tensor | None:
        """[batch, L, 1] (or [L, batch, 1]) True where out's row is NaN because the mask
        leaves a head of that query no key to attend to (softmax over none); None if no row
        is. Other NaN is left to out_proj, which raises. While tracing, always a tensor:
        a data-dependent branch would break the graph."""
        if mask is None:
            return None
        eager = not use_custom_op(out)
        dead = torch.isneginf(mask).all(-1)  # [batch or 1, heads or 1, L] or [L]
        if eager and not bool(dead.any()):
            return None
        bsz, tgt = (out.shape[0], out.shape[1]) if bf else (out.shape[1], out.shape[0])
        dead = dead.expand(bsz, self.num_heads, tgt).any(1)  # any head: out_proj mixes them
        rows = torch.isnan(out).any(-1) & (dead if bf else dead.t())
        return None if eager and not bool(rows.any()) else rows.unsqueeze(-1)

    def weight_bytes(self, include_packed: bool = True) -> int:
        own = sum(b.numel() * b.element_size() for b in self._buffers.values() if b is not None)
        return own + sum(getattr(self, n).weight_bytes(include_packed) for n in _PROJECTIONS)

    def scheme(self) -> str:
        return f"q, k, v, out projections: {self.q_proj.scheme()}"

    def extra_repr(self) -> str:
        dims = "" if self._qkv_same_embed_dim else f", kdim={self.kdim}, vdim={self.vdim}"
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{dims}, "
                f"dropout={self.dropout}, bias={self.q_proj.bias is not None}, "
                f"add_bias_kv={self.bias_k is not None}, add_zero_attn={self.add_zero_attn}, "
                f"batch_first={self.batch_first}, {self.scheme()}")
