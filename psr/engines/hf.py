"""Hugging Face `generate` as the engine: many prompts at once, `n` samples each, with a per-row
stop at the step boundary.

Left padding, KV cache, chunks bounded by `max_tokens_per_batch`, plus shared-prefix prefill and a
static KV cache (see `HFGenerator`). The stop check is hand-written rather than transformers'
`StopStringCriteria` because that one looks at the tail of the *whole* sequence, prompt included:
a step prompt ends in "\\n", so a model writing "Step 3: " would match "\\nStep " across the
prompt/completion boundary and stop after two tokens. Ours only looks at generated tokens."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from psr.engines.base import FinishReason, Sample, check_request, cut_at_stop, derive_seed
from psr.engines.cascade import decode, supports_cascade


class StopAfterPrompt:
    """Per-row stopping criterion (the `StoppingCriteria` call signature): a row is done once its
    *generated* tokens contain `stop`. Only a short window of the newest tokens is decoded, and
    only for rows still running; `fired[i]` records how many tokens row i had generated then."""

    def __init__(self, tokenizer, stop: str, prompt_len: int, batch_size: int):
        self.tokenizer = tokenizer
        self.stop = stop
        self.prompt_len = prompt_len
        # Every token decodes to >= 1 character, so an occurrence ending in the newest token lies
        # within len(stop) tokens; 2 more cover a stop string that ends inside a token.
        self.window = len(stop) + 2
        self.fired = [-1] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        cur = input_ids.shape[1]
        start = max(self.prompt_len, cur - self.window)
        rows = [i for i, f in enumerate(self.fired) if f < 0]
        if rows:
            tails = input_ids[rows, start:].tolist()
            for i, text in zip(rows, self.tokenizer.batch_decode(tails, skip_special_tokens=False)):
                if self.stop in text:
                    self.fired[i] = cur - self.prompt_len
        return torch.tensor([f >= 0 for f in self.fired], dtype=torch.bool, device=input_ids.device)


@dataclass
class _Group:
    """Rows (indices into the encoded prompts) that share their first `prefix` tokens."""

    prefix: int
    rows: list[int]


def share_groups(encoded: list[list[int]], min_prefix: int = 8) -> list[_Group]:
    """Group token rows by a shared prefix so that it is encoded once per group, not per row.

    The rows are sorted; runs of neighbours with a common prefix form a trie. For each run we keep
    either one group with the run's common prefix or the best grouping of its sub-runs (longer
    prefixes, fewer rows each), whichever skips more prefill tokens: for the judge's 30 prompts
    per question this finds (question, candidate in slot A) groups. Every row keeps at least one
    token of its own, which `generate` needs to start from. Rows sharing less than `min_prefix`
    tokens with anything stand alone (prefix 0)."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i])
    lcp = [_common_prefix(encoded[a], encoded[b]) for a, b in zip(order, order[1:])]

    def best(lo: int, hi: int, depth: int) -> tuple[int, list[_Group]]:
        rows = order[lo:hi]
        if hi - lo == 1:
            return 0, [_Group(0, rows)]
        common = min(min(lcp[lo : hi - 1]), min(len(encoded[i]) for i in rows) - 1)
        whole = (hi - lo - 1) * common if common >= min_prefix else 0
        cut = min(lcp[lo : hi - 1])
        splits = [k + 1 for k in range(lo, hi - 1) if lcp[k] == cut]
        if splits and len(splits) < hi - lo - 1 and depth < 64:
            saved, groups = 0, []
            for a, b in zip([lo] + splits, splits + [hi]):
                s, g = best(a, b, depth + 1)
                saved, groups = saved + s, groups + g
            if saved > whole:
                return saved, groups
        return whole, [_Group(common if whole else 0, rows)] if whole else [_Group(0, [i]) for i in rows]

    return best(0, len(order), 0)[1] if encoded else []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


class RowSampler:
    """Temperature + nucleus sampling where row r's t-th token uses the t-th number of its own
    uniform stream (seeded per row), by inverse-CDF over the top-p set. The chosen token gets
    logit 0 and every other -inf, so `generate`'s greedy step takes it. Written by hand because
    HF's sampler draws all rows from one global RNG stream (batch-dependent results)."""

    def __init__(self, row_seeds: list[int], temperature: float, top_p: float, max_new_tokens: int):
        self.temperature = temperature
        self.top_p = top_p
        self.start = 0
        self.uniforms = torch.stack(
            [torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
             for s in row_seeds]
        )

    def pick(self, scores: torch.FloatTensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """The `step`-th token of each of `rows` (indices into the row seeds) from its logits."""
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < self.top_p
        cdf = (sorted_probs * keep).cumsum(dim=-1)
        u = self.uniforms[rows.cpu(), step].to(cdf.device).unsqueeze(-1) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).clamp(max=cdf.shape[-1] - 1)
        return order.gather(-1, pick).squeeze(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """As a logits processor of `generate`: the picked token gets 0, every other -inf."""
        token = self.pick(scores, torch.arange(scores.shape[0]), input_ids.shape[1] - self.start)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token.unsqueeze(-1), 0.0)


class HFGenerator:
    """Batched Hugging Face `generate`: prompts x n rows, cut into chunks of at most
    `max_tokens_per_batch` (rows x (padded prompt + max_new_tokens)).

    Two things make it much faster than one `generate` per prompt beyond batching itself:
    - shared prefixes (the judge's 30 prompts per question, the n samples of one prompt) are
      encoded once per group and their KV cache copied to the group's rows (`share_groups`);
      the rest of each prompt is then prefilled by `generate` as a cache continuation;
    - a preallocated (static) KV cache, so decoding does not re-copy the cache every token.
    Greedy requests decode each distinct prompt once and copy the result.

    Sampling is seeded per row from (prompt seed, prompt, sample index) (`RowSampler`), so a
    sample never depends on the batch it was drawn in, nor on timing."""

    def __init__(self, model, tokenizer, max_tokens_per_batch: int = 32768, *, share_prefixes: bool = True,
                 static_cache: bool = True, cascade: bool = True):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer needs a pad token (psr.models.load_tokenizer sets one)")
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1 (got {max_tokens_per_batch})")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens_per_batch = max_tokens_per_batch
        eos = tokenizer.eos_token_id
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = set([eos] if eos is not None else [])
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if not ids:
            raise ValueError("tokenizer has no EOS token")
        self.eos_ids = sorted(ids)
        # Both speed-ups need a plain full-attention KV cache (no sliding windows or hybrid layers).
        self.static_cache = static_cache and _has_plain_static_cache(model)
        self.share_prefixes = share_prefixes and self.static_cache
        # shared prefixes stored once, not copied per row (psr.engines.cascade), where the model allows
        self.cascade = self.share_prefixes and cascade and supports_cascade(model)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def generate(
        self,
        prompts: list[str],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        stop: str | None,
        seed: int,
        seeds: list[int] | None = None,
    ) -> list[list[Sample]]:
        check_request(prompts, n, temperature, top_p, max_new_tokens)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds must have one entry per prompt ({len(seeds)} for {len(prompts)} prompts)")
        if not prompts:
            return []
        greedy = temperature == 0
        # Rows to decode: greedy needs each distinct prompt once; sampling needs every sample.
        if greedy:
            distinct = list(dict.fromkeys(prompts))
            rows = distinct
        else:
            rows = [p for p in prompts for _ in range(n)]
        encoded = self.tokenizer(rows, add_special_tokens=False)["input_ids"]
        if any(not x for x in encoded):
            raise ValueError("every prompt must encode to at least one token")
        groups = share_groups(encoded) if self.share_prefixes else [_Group(0, [i]) for i in range(len(rows))]
        row_seeds = None
        if not greedy:
            base = seeds if seeds is not None else [seed] * len(prompts)
            row_seeds = [derive_seed(base[k], prompts[k], j) for k in range(len(prompts)) for j in range(n)]
        results: list[Sample | None] = [None] * len(rows)
        for chunk in self._chunks(groups, encoded, max_new_tokens):
            sampler = None
            if row_seeds is not None:
                order = [i for g in chunk for i in g.rows]
                sampler = RowSampler([row_seeds[i] for i in order], temperature, top_p, max_new_tokens)
            samples = self._generate_chunk(chunk, encoded, sampler, max_new_tokens, stop)
            for i, s in zip((i for g in chunk for i in g.rows), samples):
                results[i] = s
        if greedy:
            by_prompt = dict(zip(distinct, results))
            return [[by_prompt[p]] * n for p in prompts]
        return [results[k * n : (k + 1) * n] for k in range(len(prompts))]  # type: ignore[misc]

    def _chunks(self, groups: list[_Group], encoded: list[list[int]], max_new_tokens: int) -> list[list[_Group]]:
        """Groups of similar shape (prefix length, then longest rest) go together; a chunk grows
        while the KV cache it needs stays within the budget (always at least one row; a group too
        big for one chunk is split, each piece keeping its prefix). That cache holds, in tokens,
        rows x (prefix width + rest width + new tokens), or with cascade decoding, where each
        prefix is stored once, groups x prefix width + rows x (rest width + new tokens)."""
        rest = lambda g: max(len(encoded[i]) - g.prefix for i in g.rows)  # noqa: E731
        ordered = sorted(groups, key=lambda g: (g.prefix, rest(g)), reverse=True)

        def tokens(n_groups: int, n_rows: int, wp: int, wr: int) -> int:
            if self.cascade:
                return n_groups * wp + n_rows * (wr + max_new_tokens)
            return n_rows * (wp + wr + max_new_tokens)

        chunks: list[list[_Group]] = []
        current: list[_Group] = []
        width_p = width_r = n_rows = 0
        for g in ordered:
            piece: _Group | None = None
            for i in g.rows:
                wp, wr = max(width_p, g.prefix), max(width_r, len(encoded[i]) - g.prefix)
                if n_rows and tokens(len(current) + (piece is None), n_rows + 1, wp, wr) > self.max_tokens_per_batch:
                    chunks.append(current)
                    current, n_rows, piece = [], 0, None
                    wp, wr = g.prefix, len(encoded[i]) - g.prefix
                if piece is None:
                    piece = _Group(g.prefix, [])
                    current.append(piece)
                piece.rows.append(i)
                width_p, width_r, n_rows = wp, wr, n_rows + 1
        if current:
            chunks.append(current)
        return chunks

    def _generate_chunk(
        self,
        groups: list[_Group],
        encoded: list[list[int]],
        sampler: "RowSampler | None",
        max_new_tokens: int,
        stop: str | None,
    ) -> list[Sample]:
        if self.cascade:
            return self._cascade_chunk(groups, encoded, sampler, max_new_tokens, stop)
        from transformers import LogitsProcessorList, StoppingCriteriaList

        pad = self.tokenizer.pad_token_id
        device = self.model.device
        rows = [(g, encoded[i]) for g in groups for i in g.rows]
        width_p = max(g.prefix for g in groups)
        width_r = max(len(x) - g.prefix for g, x in rows)
        width = width_p + width_r
        # Each row: [pad..., shared prefix][pad..., its own rest]; padding in the middle is fine,
        # positions come from the attention mask.
        ids, mask = [], []
        for g, x in rows:
            p, r = x[: g.prefix], x[g.prefix :]
            ids.append([pad] * (width_p - len(p)) + p + [pad] * (width_r - len(r)) + r)
            mask.append([0] * (width_p - len(p)) + [1] * len(p) + [0] * (width_r - len(r)) + [1] * len(r))
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=device)
        criteria = StopAfterPrompt(self.tokenizer, stop, width, len(rows)) if stop else None
        # Sampling is done by our own per-row processor (then greedy picks its token): HF samples
        # the whole batch from one RNG stream, which ties a row's sample to its batch companions.
        kwargs: dict = dict(do_sample=False)
        if sampler is not None:
            sampler.start = width
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with torch.inference_mode():
            if self.static_cache:
                kwargs["past_key_values"] = self._prefilled_cache(groups, encoded, width_p, width + max_new_tokens)
                kwargs["disable_compile"] = True  # a static cache would trigger torch.compile on GPUs
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=self.eos_ids,
                stopping_criteria=StoppingCriteriaList([criteria]) if criteria else None,
                **kwargs,
            )
        generated = out[:, width:].tolist()
        samples = []
        for row, toks in enumerate(generated):
            eos_at = next((k for k, t in enumerate(toks) if t in self.eos_ids), None)
            body = toks if eos_at is None else toks[:eos_at]
            text, stopped = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), stop)
            if stopped:
                fired = criteria.fired[row] if criteria else -1
                samples.append(Sample(text, fired if fired > 0 else len(body), "stop"))
            elif eos_at is not None:
                samples.append(Sample(text, eos_at + 1, "eos"))
            else:
                samples.append(Sample(text, len(toks), "length"))
        return samples

    def _cascade_chunk(
        self,
        groups: list[_Group],
        encoded: list[list[int]],
        sampler: "RowSampler | None",
        max_new_tokens: int,
        stop: str | None,
    ) -> list[Sample]:
        """The chunk decoded by `psr.engines.cascade.decode` (each group's prefix stored once)."""
        prefixes, rests, row_group = [], [], []
        for g in groups:
            prefixes.append(encoded[g.rows[0]][: g.prefix])
            for i in g.rows:
                rests.append(encoded[i][g.prefix :])
                row_group.append(len(prefixes) - 1)
        if sampler is not None:
            pick = sampler.pick
        else:
            pick = lambda logits, rows, step: logits.argmax(dim=-1)  # noqa: E731
        stop_check = None
        if stop:
            window = len(stop) + 2  # as StopAfterPrompt: the newest tokens hold a new occurrence
            pieces: dict[int, str] = {}

            def stop_check(row: int, generated: list[int]) -> int:
                # an occurrence ending in the newest token contains the stop's last character in
                # that token's text (or an undecodable partial byte): only then decode the tail
                newest = generated[-1]
                if newest not in pieces:
                    pieces[newest] = self.tokenizer.decode([newest], skip_special_tokens=False)
                piece = pieces[newest]
                if stop[-1] not in piece and "\ufffd" not in piece:
                    return -1
                tail = self.tokenizer.decode(generated[-window:], skip_special_tokens=False)
                return len(generated) if stop in tail else -1

        outputs = decode(
            self.model, self.tokenizer.pad_token_id, prefixes, rests, row_group,
            max_new_tokens=max_new_tokens, pick=pick, eos_ids=self.eos_ids, stop_check=stop_check,
        )
        samples = []
        for o in outputs:  # the same reading of a row as `_generate_chunk`'s
            text, stopped = cut_at_stop(self.tokenizer.decode(o.tokens, skip_special_tokens=True), stop)
            if stopped:
                samples.append(Sample(text, o.n_tokens if o.reason == "stop" else len(o.tokens), "stop"))
            else:
                samples.append(Sample(text, o.n_tokens, "eos" if o.reason == "eos" else "length"))
        return samples

    def _prefilled_cache(self, groups: list[_Group], encoded: list[list[int]], width_p: int, length: int):
        """A static cache of `length` slots whose first `width_p` hold each row's shared prefix,
        computed once per group (left padded) and copied to the group's rows."""
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=length)
        if width_p == 0:
            return cache
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        shared = [g for g in groups if g.prefix]
        prefixes = [encoded[g.rows[0]][: g.prefix] for g in shared]
        ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prefixes], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prefixes], dtype=torch.long, device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}  # no [rows, width, vocab] logits
        prefix_cache = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra
        ).past_key_values
        # rows without a shared prefix point at an extra all-zero (and fully masked) entry
        index, k = [], 0
        for g in groups:
            index += [k if g.prefix else len(shared)] * len(g.rows)
            k += bool(g.prefix)
        select = torch.tensor(index, device=device)
        for src, dst in zip(prefix_cache.layers, cache.layers):
            keys = torch.cat([src.keys, src.keys.new_zeros((1, *src.keys.shape[1:]))])
            values = torch.cat([src.values, src.values.new_zeros((1, *src.values.shape[1:]))])
            dst.update(keys.index_select(0, select), values.index_select(0, select))
        return cache


def _has_plain_static_cache(model) -> bool:
    """True when every layer of the model's static cache is a plain full-attention layer."""
    try:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        cache = StaticCache(config=model.config, max_cache_len=8)
        return bool(cache.layers) and all(type(layer) is StaticLayer for layer in cache.layers)
    except Exception:  # an architecture without a standard cache: fall back to plain generate
        return False

