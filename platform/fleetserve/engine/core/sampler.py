"""Batched sampling from the logits of one step.

The common case (every row greedy, no penalties, no logprobs) is one ``argmax`` over the
batch. Otherwise rows go through penalties, temperature, top-k / top-p / min-p masks and
then a draw. A seeded request draws with its own ``torch.Generator`` on its own row, so its
completion does not depend on what else shares the batch; unseeded rows share the engine's
generator in one batched draw.

A seeded row's noise at output position ``p`` comes from a generator seeded with
:func:`position_seed` ``(seed, p)``, not from a stream advanced once per step: the draw at
position ``p`` depends on nothing but the seed, ``p`` and the logits. A request resubmitted
with its first ``k`` output tokens (``GenerateRequest.resume_token_ids``, after a migration
or a replica failure) therefore continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from fleetserve.engine.protocol import TokenLogprob
from fleetserve.engine.core.request import Request
from fleetserve.engine.core.structured import GrammarBatch
from fleetserve.engine.sampling_params import SamplingParams


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: Optional[list[Optional[TokenLogprob]]] = None  # per row, when any row asked


def _has_penalty(p: SamplingParams) -> bool:
    return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0


def _is_plain_greedy(p: SamplingParams) -> bool:
    return p.temperature == 0.0 and p.logprobs is None and not _has_penalty(p) and not p.logit_bias


class Sampler:
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor, requests: Sequence[Request],
               grammar: Optional[GrammarBatch] = None) -> SamplerOutput:
        """``logits[i]`` are the next-token logits of ``requests[i]`` (float32 [k, vocab]).
        ``grammar`` masks the rows with a constraint (None: no row has one, no extra work);
        logprobs stay those of the unconstrained model, as in vLLM."""
        params = [r.params for r in requests]
        if all(_is_plain_greedy(p) for p in params):
            if grammar is not None:
                grammar.apply(logits)  # in place: nothing reads these logits after the argmax
            return SamplerOutput(logits.argmax(dim=-1).tolist())
        logits = logits.float()
        raw_logprobs = None
        if any(p.logprobs is not None for p in params):
            # Logprobs of the model's distribution, before penalties and temperature (as vLLM).
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = self._apply_penalties(logits.clone(), requests)
        if grammar is not None:
            grammar.apply(logits)
        token_ids = self._draw(logits, requests)
        logprobs = self._logprobs(raw_logprobs, token_ids, params) if raw_logprobs is not None else None
        return SamplerOutput(token_ids, logprobs)

    # ---------------------------------------------------------------- phases
    @staticmethod
    def _apply_penalties(logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        vocab = logits.shape[-1]
        for i, request in enumerate(requests):
            p = request.params
            if p.logit_bias:  # OpenAI adds the bias to the logit before anything else
                ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
                logits[i, ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
            if not _has_penalty(p):
                continue
            row = logits[i]
            if p.repetition_penalty != 1.0:
                # Over prompt and output tokens (as HF and vLLM): shrink positive logits,
                # push negative ones further down.
                seen = torch.tensor(sorted(set(request.all_token_ids)), dtype=torch.long)
                vals = row[seen]
                row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if request.output_token_ids and (p.presence_penalty or p.frequency_penalty):
                out = torch.tensor(request.output_token_ids, dtype=torch.long)
                counts = torch.bincount(out, minlength=vocab)[:vocab].to(row.dtype)
                row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
        return logits

    def _draw(self, logits: torch.Tensor, requests: Sequence[Request]) -> list[int]:
        params = [r.params for r in requests]
        tokens = logits.argmax(dim=-1).tolist()
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if not rows:
            return tokens
        idx = torch.tensor(rows, dtype=torch.long)
        sub = logits.index_select(0, idx)
        temps = torch.tensor([params[i].temperature for i in rows], dtype=sub.dtype).unsqueeze(1)
        sub = _mask_top_k_top_p_min_p(sub / temps, [params[i] for i in rows])
        probs = torch.softmax(sub, dim=-1)
        unseeded = [j for j, i in enumerate(rows) if requests[i].generator is None]
        if unseeded:
            sel = torch.tensor(unseeded, dtype=torch.long)
            chosen = _exponential_race(probs.index_select(0, sel), self.generator).tolist()
            for j, tok in zip(unseeded, chosen):
                tokens[rows[j]] = tok
        for j, i in enumerate(rows):
            request = requests[i]
            gen = request.generator
            if gen is not None:
                gen.manual_seed(position_seed(request.params.seed, request.num_output_tokens))
                tokens[i] = int(_exponential_race(probs[j:j + 1], gen)[0])
        return tokens

    @staticmethod
    def _logprobs(
        raw: torch.Tensor, token_ids: list[int], params: list[SamplingParams]
    ) -> list[Optional[TokenLogprob]]:
        out: list[Optional[TokenLogprob]] = []
        for i, p in enumerate(params):
            if p.logprobs is None:
                out.append(None)
                continue
            top: dict[int, float] = {}
            if p.logprobs > 0:
                vals, ids = raw[i].topk(p.logprobs)
                top = dict(zip(ids.tolist(), vals.tolist()))
            out.append(TokenLogprob(token_ids[i], float(raw[i, token_ids[i]]), top))
        return out


_MASK64 = (1 << 64) - 1


def position_seed(seed: int, position: int) -> int:
    """The generator seed of output position ``position`` of a request seeded ``seed``:
    SplitMix64's finalizer over both, so neighbouring seeds and positions give unrelated
    streams (``manual_seed`` takes 64 bits)."""
    z = (seed * 0x9E3779B97F4A7C15 + (position + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: torch takes any non-negative int64


def _exponential_race(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sample one index per row: argmax(p / E) with E ~ Exp(1) is a draw from p (the
    Gumbel-max trick in another form), and needs no cumulative sums."""
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def _mask_top_k_top_p_min_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Set logits outside each row's top-k / top-p nucleus / min-p floor to -inf."""
    vocab = logits.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_p = [p.top_p for p in params]
    min_p = [p.min_p for p in params]
    use_k = any(k < vocab for k in top_k)
    use_p = any(x < 1.0 for x in top_p)
    use_min_p = any(x > 0.0 for x in min_p)
    if not (use_k or use_p or use_min_p):
        return logits
    neg_inf = torch.finfo(logits.dtype).min
    if use_min_p:
        probs = torch.softmax(logits, dim=-1)
        floor = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_p, dtype=logits.dtype).unsqueeze(1)
        logits = logits.masked_fill(probs < floor, neg_inf)
    if use_k or use_p:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab).unsqueeze(0)
        drop = ranks >= torch.tensor(top_k).unsqueeze(1)
        if use_p:
            sorted_logits = sorted_logits.masked_fill(drop, neg_inf)
            sorted_probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p; the first
            # token always survives.
            before = sorted_probs.cumsum(dim=-1) - sorted_probs
            drop |= before >= torch.tensor(top_p, dtype=logits.dtype).unsqueeze(1)
            drop[:, 0] = False
        mask = torch.zeros_like(drop).scatter(1, order, drop)
        logits = logits.masked_fill(mask, neg_inf)
    return logits
