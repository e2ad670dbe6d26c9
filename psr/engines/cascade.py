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

Prompts are prefilled in pieces, then every row of a call decodes in one batch (a big batch
amortises each step's fixed cost). One prefix level per group: a second level (the question,
then each slot-A candidate) cost as much in attention merges as it saved in prefill (README,
Benchmarks).

The model itself is unchanged: `CascadeCache` is handed to `model(...)` as `past_key_values`
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
class Prefixes:
    """The groups' shared prefixes: per layer, keys and values [G, Hkv, Lp, D], left padded with
    zeros; `valid` [G, Lp] marks real slots; `row_group` [R] is each row's group. Rows are
    contiguous per group."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor
    row_group: torch.Tensor

    def rows(self, lo: int, hi: int) -> "Prefixes":
        """The prefixes as rows [lo, hi) see them (a view: the groups they use, renumbered)."""
        g_lo, g_hi = int(self.row_group[lo]), int(self.row_group[hi - 1]) + 1
        return Prefixes([(k[g_lo:g_hi], v[g_lo:g_hi]) for k, v in self.kv], self.valid[g_lo:g_hi],
                      self.row_group[lo:hi] - g_lo)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the groups that `rows` use (renumbered)."""
        groups, self.row_group = torch.unique(self.row_group[rows], return_inverse=True)
        if len(groups) < self.valid.shape[0]:
            self.kv = [(k.index_select(0, groups), v.index_select(0, groups)) for k, v in self.kv]
            self.valid = self.valid.index_select(0, groups)


class CascadeCache:
    """The cache the model writes to: the groups' shared prefixes plus, per layer, per-row suffix
    buffers. `update` appends the new tokens' keys/values to the suffix and hands the whole
    cache to the attention function (as its key and value arguments).

    Suffix buffers are not initialised: attention reads a row's suffix only up to `filled + new`,
    and every slot there has been written (a prompt's left padding is written with zeros)."""

    is_compileable = False

    def __init__(self, prefix: Prefixes, n_rows: int, capacity: int):
        self.prefix = prefix
        self.suffix_k, self.suffix_v = [], []
        for k, v in prefix.kv:
            shape = (n_rows, k.shape[1], capacity, k.shape[3])
            self.suffix_k.append(k.new_empty(shape))
            self.suffix_v.append(v.new_empty(shape))
        self.suffix_valid = torch.zeros((n_rows, capacity), dtype=torch.bool, device=prefix.valid.device)
        self.filled = 0  # suffix slots written (the same for every row: rows are aligned)
        self.new = 0  # tokens being written by the current forward
        self._slots: tuple[torch.Tensor, torch.Tensor] | None = None
        self._masks: tuple | None = None

    def window(self, lo: int, hi: int, start: int) -> "CascadeCache":
        """Rows [lo, hi) of an empty cache, their suffix starting at column `start`, as a cache
        of its own that shares this one's storage: a prompt prefill in pieces of rows, each only
        as wide as its own longest rest. Columns before `start` are zeroed (padding)."""
        if self.filled:
            raise ValueError("a window is only for the prefill of an empty cache")
        view = object.__new__(CascadeCache)
        view.prefix = self.prefix.rows(lo, hi)
        for buf in self.suffix_k + self.suffix_v:
            buf[lo:hi, :, :start] = 0
        view.suffix_k = [buf[lo:hi, :, start:] for buf in self.suffix_k]
        view.suffix_v = [buf[lo:hi, :, start:] for buf in self.suffix_v]
        view.suffix_valid = self.suffix_valid[lo:hi, start:]
        view.filled, view.new, view._slots, view._masks = 0, 0, None, None
        return view

    # the part of transformers' Cache interface that decoder-only models call
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        t = key_states.shape[2]
        self.suffix_k[layer_idx][:, :, self.filled : self.filled + t] = key_states
        self.suffix_v[layer_idx][:, :, self.filled : self.filled + t] = value_states
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
        """Keep only `rows` (a row may be repeated: a state that split), in that order, and the
        groups they use; only the written part of each suffix is copied."""
        filled = self.filled
        for bufs in (self.suffix_k, self.suffix_v):
            for i, old in enumerate(bufs):
                new = old.new_empty((len(rows), *old.shape[1:]))
                new[:, :, :filled] = old[:, :, :filled].index_select(0, rows)
                bufs[i] = new
        self.suffix_valid = self.suffix_valid.index_select(0, rows)
        self.prefix.keep(rows)
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
            prefix = _additive(self.prefix.valid[:, None, None, :], dtype)
            self._masks = (key, (suffix, prefix, ~self.prefix.valid.any(-1)))
        return self._masks[1]

    def slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot index [G, S] of each group's rows, padded with row 0; mask [G, S]): the layout
        that lets a group's queries meet its prefix in one matrix product."""
        if self._slots is None:
            counts = torch.bincount(self.prefix.row_group, minlength=self.prefix.valid.shape[0])
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
    `key`/`value` are what `CascadeCache.update` returned. Returns ([R, T, H, D], None)."""
    cache, layer_idx = key
    r, h, t, d = query.shape
    suffix_k, suffix_v = cache.suffix_k[layer_idx], cache.suffix_v[layer_idx]
    hkv = suffix_k.shape[1]
    rep = h // hkv
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(d)
    suffix_mask, prefix_mask, no_prefix = cache.masks(query.dtype, rep)

    # each row against its own suffix, as far as it is filled (causal among the new tokens)
    length = cache.filled + t
    q_rows = query.reshape(r, hkv, rep * t, d)
    o_s, lse_s = _attend(q_rows, suffix_k[:, :, :length], suffix_v[:, :, :length], suffix_mask, scaling)

    # each group's queries against the group's shared prefix, read once per group
    prefix_k, prefix_v = cache.prefix.kv[layer_idx]
    index, present = cache.slots()
    g, s = index.shape
    if g * s <= 2 * r:
        q_groups = q_rows[index.reshape(-1)].reshape(g, s, hkv, rep * t, d).permute(0, 2, 1, 3, 4)
        q_groups = q_groups.reshape(g, hkv, s * rep * t, d)
        o_p, lse_p = _attend(q_groups, prefix_k, prefix_v, prefix_mask, scaling)
        lse_p = lse_p.masked_fill(no_prefix[:, None, None], float("-inf"))  # an empty prefix weighs 0
        # [G, Hkv, S*rep*t, ...] -> [R, Hkv, rep*t, ...]
        o_p = o_p.reshape(g, hkv, s, rep * t, d).permute(0, 2, 1, 3, 4)[present]
        lse_p = lse_p.reshape(g, hkv, s, rep * t).permute(0, 2, 1, 3)[present]
    else:
        # groups of very different sizes: padding every group to the largest would cost more
        # than reading the prefix once per row
        rows = cache.prefix.row_group
        o_p, lse_p = _attend(q_rows, prefix_k.index_select(0, rows), prefix_v.index_select(0, rows),
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


PREFILL_TOKENS = 4096  # tokens per prompt-prefill forward: small enough that its activations stay in cache
COMPACT_FRACTION = 8  # finished rows are dropped from the batch once they are >= 1/8 of it


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
    prefill_tokens: int | None = None,
) -> list[RowOutput]:
    """Decode rows that share group prefixes. `prefixes[g]` is group g's shared tokens (may be
    empty), `rests[i]` row i's own prompt tokens (>= 1), `row_group[i]` its group; rows must be
    contiguous per group. `pick(logits [R, V], live_rows [R], step)` returns the next token of
    each live row. `stop_check(row, generated)` returns how many generated tokens a stop string
    ended at (> 0), or -1.

    Prompts are prefilled in pieces of about `prefill_tokens` (default `PREFILL_TOKENS`) tokens,
    each padded only to its own longest prompt (on a CPU, small pieces also keep the activations
    in cache); then all rows decode together, one token per step, since a big batch amortises
    each step's fixed cost. Rows in the same state (same group, same rest, same tokens so far:
    the n samples of a prompt until they diverge) are decoded once; a state splits when its rows
    draw different tokens. Finished rows leave the batch once they are a noticeable fraction of
    it (dropping a row copies every other row's cache)."""
    if any(b < a for a, b in zip(row_group, row_group[1:])) or any(not x for x in rests):
        raise ValueError("rows must be grouped in ascending group order, each with >= 1 token of its own")
    device = model.device
    n = len(rests)
    prefill_tokens = prefill_tokens or PREFILL_TOKENS
    # the decoded states, grouped; groups ordered by their longest rest and states within a group
    # by theirs, so that neighbouring rows (one prefill piece) have rests of similar length
    by_group: dict[int, dict[tuple[int, ...], list[int]]] = {}
    for i, (g, x) in enumerate(zip(row_group, rests)):
        by_group.setdefault(g, {}).setdefault(tuple(x), []).append(i)
    order = sorted(by_group, key=lambda g: -max(len(x) for x in by_group[g]))
    members = [rows for g in order for _, rows in sorted(by_group[g].items(), key=lambda kv: -len(kv[0]))]
    state_rest = [rests[m[0]] for m in members]
    state_group = [k for k, g in enumerate(order) for _ in by_group[g]]
    group_prefix = [prefixes[g] for g in order]

    with torch.inference_mode():
        kv, valid = _prefill_prefixes(model, pad_id, group_prefix, prefill_tokens)
        width_r = max(len(x) for x in state_rest)
        cache = CascadeCache(Prefixes(kv, valid, torch.tensor(state_group, device=device)), len(members),
                              width_r + max_new_tokens)
        starts = torch.tensor([len(group_prefix[g]) for g in state_group], device=device)
        logits = _prefill_rests(model, pad_id, cache, state_rest, starts, prefill_tokens)
    next_pos = starts + torch.tensor([len(x) for x in state_rest], device=device)

    generated: list[list[int]] = [[] for _ in range(n)]
    outputs: list[RowOutput | None] = [None] * n
    eos = set(eos_ids)
    slots: list[list[int] | None] = list(members)  # batch row -> original rows it decodes (None: finished)
    with torch.inference_mode(), _cascade_attention(model):
        for step in range(max_new_tokens):
            live = [u for u, m in enumerate(slots) if m is not None]
            expand = [u for u in live for _ in slots[u]]  # type: ignore[union-attr]
            rows = [r for u in live for r in slots[u]]  # type: ignore[union-attr]
            if expand != list(range(logits.shape[0])):  # finished slots, or states of several rows
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
            split = len(parents) > len(set(parents))
            if split or (len(slots) - len(parents)) * COMPACT_FRACTION >= len(slots):
                index = torch.tensor(parents, device=device)  # ascending: groups stay in order
                cache.keep_rows(index)
                next_pos = next_pos[index]
                slots = list(children.values())
                inputs = [tok for _, tok in children]
            else:  # finished rows ride along (a pad token each) until there are enough to drop
                slots = [None] * len(slots)
                inputs = [pad_id] * len(slots)
                for (u, tok), kids in children.items():
                    slots[u], inputs[u] = kids, tok
            ids = torch.tensor(inputs, dtype=torch.long, device=device)[:, None]
            cache.begin(torch.ones_like(ids, dtype=torch.bool))
            logits = model(input_ids=ids, position_ids=next_pos[:, None], past_key_values=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1, :]
            cache.end()
            next_pos = next_pos + 1
    return [o if o is not None else RowOutput(generated[i], "length", len(generated[i])) for i, o in enumerate(outputs)]


def _prefill_prefixes(model, pad_id: int, prefixes: list[list[int]], prefill_tokens: int):
    """Each prefix encoded once: per layer (keys, values) [G, Hkv, Lp, D], left padded with
    zeros, and the valid mask [G, Lp]. Empty prefixes get no forward at all."""
    from transformers import DynamicCache

    device = model.device
    width = max(1, max((len(p) for p in prefixes), default=0))
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prefixes], device=device)
    hkv, head_dim = _kv_shape(model)
    dtype = model.get_input_embeddings().weight.dtype  # the activations' dtype, also for quantized models
    shape = (len(prefixes), hkv, width, head_dim)
    layers = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
              for _ in range(model.config.num_hidden_layers)]
    todo = sorted((g for g, p in enumerate(prefixes) if p), key=lambda g: -len(prefixes[g]))
    for piece in prefill_pieces([len(prefixes[g]) for g in todo], prefill_tokens):
        groups = todo[piece]
        w = len(prefixes[groups[0]])  # the longest in the piece (sorted)
        ids = torch.tensor([[pad_id] * (w - len(prefixes[g])) + prefixes[g] for g in groups], device=device)
        ok = valid[groups, width - w :]
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=ok.long(), position_ids=(ok.long().cumsum(-1) - 1).clamp(min=0),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        index = torch.tensor(groups, device=device)
        keep = ok[:, None, :, None]
        for (keys, values), layer in zip(layers, cache.layers):
            # padding slots hold whatever a fully masked row computed (possibly NaN): zero them,
            # since a masked weight of 0 times NaN would still be NaN
            keys[index, :, width - w :] = layer.keys.masked_fill(~keep, 0.0)
            values[index, :, width - w :] = layer.values.masked_fill(~keep, 0.0)
    return layers, valid


def _kv_shape(model) -> tuple[int, int]:
    """(key/value heads, head dimension) of a model's attention layers."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return getattr(config, "num_key_value_heads", None) or heads, head_dim


def _prefill_rests(model, pad_id: int, cache: CascadeCache, rests: list[list[int]], starts: torch.Tensor,
                   prefill_tokens: int) -> torch.Tensor:
    """Each row's own prompt tokens, in pieces of neighbouring rows, right-aligned in the suffix
    buffers; the last position's logits of every row [R, V]."""
    device = model.device
    width = max(len(x) for x in rests)
    logits = []
    with _cascade_attention(model):
        for piece in prefill_pieces([len(x) for x in rests], prefill_tokens):
            w = max(len(x) for x in rests[piece])
            part = rests[piece]
            ids = torch.tensor([[pad_id] * (w - len(x)) + x for x in part], dtype=torch.long, device=device)
            ok = torch.tensor([[False] * (w - len(x)) + [True] * len(x) for x in part], device=device)
            view = cache.window(piece.start, piece.stop, width - w)
            view.begin(ok)
            positions = starts[piece, None] + (ok.long().cumsum(-1) - 1).clamp(min=0)
            logits.append(model(input_ids=ids, position_ids=positions, past_key_values=view, use_cache=True,
                                logits_to_keep=1).logits[:, -1, :])
    cache.filled = width
    return torch.cat(logits)


def prefill_pieces(lengths: list[int], budget: int) -> list[slice]:
    """Consecutive slices whose rows x longest length stays within `budget` (>= 1 row each)."""
    pieces, lo, widest = [], 0, 0
    for i, n in enumerate(lengths):
        widest_with = max(widest, n)
        if i > lo and (i - lo + 1) * widest_with > budget:
            pieces.append(slice(lo, i))
            lo, widest_with = i, n
        widest = widest_with
    if lengths:
        pieces.append(slice(lo, len(lengths)))
    return pieces
