"""Shared-prefix ("cascade") decoding: the decode loop behind `HFGenerator` for causal LMs whose
attention goes through transformers' attention interface (Llama, Qwen2, Mistral, ...).

Why by hand: on a CPU, decoding a batch of many short rows is bound by reading the KV cache, and
our rows share most of it: the w candidates of a step share the whole prompt, the judge prompts
of one question share the question, the earlier steps and candidate A. A plain KV cache (HF's
static or dynamic one) holds a copy of that prefix per row and reads every copy at every token;
vLLM's prefix caching or FlashInfer's cascade attention avoid this on GPUs, but nothing in the
HF/PyTorch CPU stack does. Here each group's prefix is encoded and stored once; every row keeps
only its own tokens ("suffix": the rest of its prompt, then what it generates). Attention is
computed in two parts, queries of a group against their one shared prefix and each row against
its own suffix, and merged exactly with the log-sum-exp rule (the same result as attending to
the concatenation, up to float rounding). The suffix is read only as far as it is filled, and
rows that finished are dropped from the batch.

The model itself is unchanged: `_CascadeCache` is handed to `model(...)` as `past_key_values`
and the model's attention modules call our attention function through a registered
implementation name, switched on only for the duration of a call."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

ATTN_NAME = "psr_cascade"
_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, cascade_attention)
        _registered = True


def supports_cascade(model) -> bool:
    """True for decoder-only models whose layers all use full attention through the attention
    interface (checked by the config: no sliding windows, no hybrid/linear-attention layers)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "model_type", "") not in {"llama", "qwen2", "mistral", "qwen3", "olmo2", "granite"}:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None)
    return not layer_types or all(t == "full_attention" for t in layer_types)


@contextmanager
def _cascade_attention(model) -> Iterator[None]:
    """Route the model's attention through `cascade_attention` for the duration of the block."""
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


@dataclass
class _LayerKV:
    prefix_k: torch.Tensor  # [G, Hkv, Lp, D], one entry per group (left padded)
    prefix_v: torch.Tensor
    suffix_k: torch.Tensor  # [R, Hkv, Ls, D], one entry per row
    suffix_v: torch.Tensor


class _CascadeCache:
    """The cache the model writes to: per layer, group prefixes plus per-row suffix buffers.
    `update` appends the new tokens' keys/values to the suffix and hands the whole cache to the
    attention function (as its key and value arguments)."""

    is_compileable = False

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], prefix_valid: torch.Tensor,
                 row_group: torch.Tensor, n_rows: int, capacity: int):
        self.layers = []
        for k, v in prefix:
            shape = (n_rows, k.shape[1], capacity, k.shape[3])
            self.layers.append(_LayerKV(k, v, k.new_zeros(shape), v.new_zeros(shape)))
        self.prefix_valid = prefix_valid  # [G, Lp] bool
        self.row_group = row_group  # [R] long: the group of each row
        self.suffix_valid = torch.zeros((n_rows, capacity), dtype=torch.bool, device=prefix_valid.device)
        self.filled = 0  # suffix slots written (the same for every row: rows are aligned)
        self.new = 0  # tokens being written by the current forward
        self._slots: tuple[torch.Tensor, torch.Tensor] | None = None
        self._masks: tuple | None = None

    # the part of transformers' Cache interface that decoder-only models call
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        t = key_states.shape[2]
        layer.suffix_k[:, :, self.filled : self.filled + t] = key_states
        layer.suffix_v[:, :, self.filled : self.filled + t] = value_states
        return (self, layer_idx), (self, layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.filled

    def begin(self, valid: torch.Tensor) -> None:
        """Before a forward: which of the `t` new tokens are real (`valid`: [R, t] bool)."""
        self.new = valid.shape[1]
        self.suffix_valid[:, self.filled : self.filled + self.new] = valid

    def end(self) -> None:
        """After a forward: the new tokens are part of every later token's past."""
        self.filled += self.new
        self.new = 0

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every row not in `rows` (and groups left without rows)."""
        groups, row_group = torch.unique(self.row_group[rows], return_inverse=True)
        for layer in self.layers:
            layer.suffix_k = layer.suffix_k.index_select(0, rows)
            layer.suffix_v = layer.suffix_v.index_select(0, rows)
            if len(groups) < layer.prefix_k.shape[0]:
                layer.prefix_k = layer.prefix_k.index_select(0, groups)
                layer.prefix_v = layer.prefix_v.index_select(0, groups)
        self.suffix_valid = self.suffix_valid.index_select(0, rows)
        if len(groups) < self.prefix_valid.shape[0]:
            self.prefix_valid = self.prefix_valid.index_select(0, groups)
        self.row_group = row_group
        self._slots = self._masks = None

    def masks(self, dtype: torch.dtype, rep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(suffix mask [R, 1, rep*t, L], prefix mask [G, 1, 1, Lp], groups with no prefix [G]) for
        the current forward, additive; built once per forward, shared by all layers."""
        key = (self.filled, self.new, dtype, rep, self.suffix_valid.shape[0])
        if self._masks is None or self._masks[0] != key:
            t, length = self.new, self.filled + self.new
            device = self.suffix_valid.device
            causal = torch.ones((t, length), dtype=torch.bool, device=device).tril(self.filled)
            diagonal = torch.zeros_like(causal)
            diagonal[:, self.filled :] = torch.eye(t, dtype=torch.bool, device=device)
            # real keys up to the query; a padding query sees itself (never a fully masked row)
            suffix = (self.suffix_valid[:, None, :length] & causal[None]) | diagonal[None]
            suffix = _additive(suffix.repeat(1, rep, 1)[:, None], dtype)
            prefix = _additive(self.prefix_valid[:, None, None, :], dtype)
            self._masks = (key, (suffix, prefix, ~self.prefix_valid.any(-1)))
        return self._masks[1]

    def slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot index [G, S] of each group's rows, padded with row 0; mask [G, S]): the layout
        that lets a group's queries meet its prefix in one matrix product. Rows are contiguous
        per group (the generator orders them so)."""
        if self._slots is None:
            counts = torch.bincount(self.row_group, minlength=self.prefix_valid.shape[0])
            width = int(counts.max())
            starts = torch.cumsum(counts, 0) - counts
            offsets = torch.arange(width, device=counts.device)
            index = starts[:, None] + offsets[None, :]
            mask = offsets[None, :] < counts[:, None]
            self._slots = (torch.where(mask, index, torch.zeros_like(index)), mask)
        return self._slots


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float):
    """Attention of q [B, Hkv, Q, D] over k, v [B, Hkv, L, D] with an additive float mask
    [B, 1, Q|1, L]: (normalised output [B, Hkv, Q, D], log-sum-exp of the scores [B, Hkv, Q]),
    so that attention over parts of the keys can be merged exactly. On CPU this is PyTorch's
    fused flash kernel (which returns the log-sum-exp); elsewhere plain matrix products."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask.to(q.dtype), scale=scaling
        )
        return out, lse
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling + mask
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    return torch.matmul(weights, v), lse


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def cascade_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention implementation registered as `psr_cascade` (transformers' signature):
    `key`/`value` are what `_CascadeCache.update` returned. Returns ([R, T, H, D], None)."""
    cache, layer_idx = key
    layer = cache.layers[layer_idx]
    r, h, t, d = query.shape
    hkv = layer.prefix_k.shape[1]
    rep = h // hkv
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(d)
    suffix_mask, prefix_mask, no_prefix = cache.masks(query.dtype, rep)

    # each row against its own suffix, as far as it is filled (causal among the new tokens)
    length = cache.filled + t
    q_rows = query.reshape(r, hkv, rep * t, d)
    o_s, lse_s = _attend(q_rows, layer.suffix_k[:, :, :length], layer.suffix_v[:, :, :length], suffix_mask, scaling)

    # each group's queries against the group's shared prefix, read once per group
    index, present = cache.slots()
    g, s = index.shape
    if t == 1 and g * s <= 2 * r:
        q_groups = q_rows[index.reshape(-1)].reshape(g, s, hkv, rep * t, d).permute(0, 2, 1, 3, 4)
        q_groups = q_groups.reshape(g, hkv, s * rep * t, d)
        o_p, lse_p = _attend(q_groups, layer.prefix_k, layer.prefix_v, prefix_mask, scaling)
        lse_p = lse_p.masked_fill(no_prefix[:, None, None], float("-inf"))  # an empty prefix weighs 0
        # [G, Hkv, S*rep*t, ...] -> [R, Hkv, rep*t, ...]
        o_p = o_p.reshape(g, hkv, s, rep * t, d).permute(0, 2, 1, 3, 4)[present]
        lse_p = lse_p.reshape(g, hkv, s, rep * t).permute(0, 2, 1, 3)[present]
    else:
        # many queries per row (the prompt rests) or groups of very different sizes: padding every
        # group to the largest would cost more than reading the prefix once per row
        rows = cache.row_group
        o_p, lse_p = _attend(q_rows, layer.prefix_k.index_select(0, rows), layer.prefix_v.index_select(0, rows),
                             prefix_mask.index_select(0, rows), scaling)
        lse_p = lse_p.masked_fill(no_prefix.index_select(0, rows)[:, None, None], float("-inf"))
    m = torch.maximum(lse_s, lse_p)  # finite: every query sees at least itself in its suffix
    w_s, w_p = torch.exp(lse_s - m).unsqueeze(-1), torch.exp(lse_p - m).unsqueeze(-1)
    out = (o_s * w_s + o_p * w_p) / (w_s + w_p)
    # [R, Hkv, rep*t, D] -> [R, t, H, D]
    out = out.reshape(r, hkv, rep, t, d).reshape(r, h, t, d).transpose(1, 2)
    return out.contiguous(), None


# ---------------------------------------------------------------------------------------------
# The decode loop
# ---------------------------------------------------------------------------------------------


@dataclass
class RowOutput:
    tokens: list[int]
    reason: str  # "stop" | "eos" | "length"
    n_tokens: int  # tokens counted for the sample (up to and including what ended it)


def decode(
    model,
    pad_id: int,
    prefixes: list[list[int]],
    rests: list[list[int]],
    row_group: list[int],
    *,
    max_new_tokens: int,
    pick: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    eos_ids: list[int],
    stop_check: Callable[[int, list[int]], int] | None,
) -> list[RowOutput]:
    """Decode rows that share group prefixes. `prefixes[g]` is group g's shared tokens (may be
    empty), `rests[i]` row i's own prompt tokens (>= 1), `row_group[i]` its group; rows must be
    contiguous per group. `pick(logits [R, V], live_rows [R], step)` returns the next token of
    each live row. `stop_check(row, generated)` returns how many generated tokens a stop string
    ended at (> 0), or -1. Finished rows leave the batch."""
    if any(b < a for a, b in zip(row_group, row_group[1:])) or any(not x for x in rests):
        raise ValueError("rows must be grouped in ascending group order, each with >= 1 token of its own")
    device = model.device
    n = len(rests)
    # 1. the shared prefixes, once per group (left padded); groups without one get an empty entry
    width_p = max((len(p) for p in prefixes), default=0)
    width_p = max(width_p, 1)
    ids = torch.tensor([[pad_id] * (width_p - len(p)) + p for p in prefixes], dtype=torch.long, device=device)
    valid_p = torch.tensor([[False] * (width_p - len(p)) + [True] * len(p) for p in prefixes], device=device)
    positions = (valid_p.long().cumsum(-1) - 1).clamp(min=0)
    from transformers import DynamicCache

    prefix_cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=valid_p.long(), position_ids=positions, past_key_values=prefix_cache,
              use_cache=True, logits_to_keep=1)
    # padding slots hold whatever a fully masked row computed (possibly NaN): zero them, since a
    # masked weight of 0 times NaN would still be NaN
    keep = valid_p[:, None, :, None]
    prefix = [(layer.keys.masked_fill(~keep, 0.0), layer.values.masked_fill(~keep, 0.0)) for layer in prefix_cache.layers]
    # 2. each row's rest (left padded), then one token at a time. Rows in the same state (same
    # group, same rest, same tokens so far: the n samples of a prompt until they diverge) are
    # decoded once; a state splits when its rows draw different tokens.
    states: dict[tuple, list[int]] = {}
    for i, (g, x) in enumerate(zip(row_group, rests)):
        states.setdefault((g, tuple(x)), []).append(i)
    members = list(states.values())  # original rows in each decoded state, in group order
    first = [m[0] for m in members]
    width_r = max(len(x) for x in rests)
    groups_of = torch.tensor([row_group[i] for i in first], device=device)
    cache = _CascadeCache(prefix, valid_p, groups_of, len(members), width_r + max_new_tokens)
    rest_ids = torch.tensor([[pad_id] * (width_r - len(rests[i])) + rests[i] for i in first], dtype=torch.long, device=device)
    rest_valid = torch.tensor([[False] * (width_r - len(rests[i])) + [True] * len(rests[i]) for i in first], device=device)
    start = torch.tensor([len(prefixes[row_group[i]]) for i in first], device=device)
    positions = start[:, None] + (rest_valid.long().cumsum(-1) - 1).clamp(min=0)
    next_pos = start + rest_valid.long().sum(-1)

    generated: list[list[int]] = [[] for _ in range(n)]
    outputs: list[RowOutput | None] = [None] * n
    eos = set(eos_ids)
    inputs, valid = rest_ids, rest_valid
    with torch.inference_mode(), _cascade_attention(model):
        for step in range(max_new_tokens):
            cache.begin(valid)
            logits = model(input_ids=inputs, position_ids=positions, past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1, :]
            cache.end()
            expand = [u for u, rows in enumerate(members) for _ in rows]
            rows = [r for m in members for r in m]
            if len(expand) > len(members):
                logits = logits[torch.tensor(expand, device=device)]
            tokens = pick(logits, torch.tensor(rows, device=device), step).tolist()
            children: dict[tuple[int, int], list[int]] = {}
            for u, row, tok in zip(expand, rows, tokens):
                generated[row].append(tok)
                if tok in eos:
                    outputs[row] = RowOutput(generated[row][:-1], "eos", len(generated[row]))
                elif stop_check is not None and (fired := stop_check(row, generated[row])) > 0:
                    outputs[row] = RowOutput(generated[row], "stop", fired)
                elif len(generated[row]) == max_new_tokens:
                    outputs[row] = RowOutput(generated[row], "length", max_new_tokens)
                else:
                    children.setdefault((u, tok), []).append(row)
            if not children:
                break
            parents = [u for u, _ in children]
            if parents != list(range(len(members))):  # rows finished or states split
                index = torch.tensor(parents, device=device)
                cache.keep_rows(index)
                next_pos = next_pos[index]
            members = list(children.values())
            inputs = torch.tensor([tok for _, tok in children], dtype=torch.long, device=device)[:, None]
            valid = torch.ones_like(inputs, dtype=torch.bool)
            positions = next_pos[:, None]
            next_pos = next_pos + 1
    return [o if o is not None else RowOutput(generated[i], "length", len(generated[i])) for i, o in enumerate(outputs)]
