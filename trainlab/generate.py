"""Text generation from a trained GPT: KV cache, temperature, top-k, top-p, a seed, stop strings, streaming.

    for piece in generate_text(model, tokenizer, "def main(", max_new_tokens=200, temperature=0.8):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from typing import Iterator

import torch

from trainlab.errors import UserError
from trainlab.models.gpt import GPT, KVCache


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from logits (B, V). temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Nucleus sampling (Holtzman et al., 2020): keep the smallest set of tokens whose probability reaches top_p.
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # tokens entirely past the nucleus
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate_ids(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time. With the cache each step feeds one token; without it, the whole
    (cropped) sequence is recomputed every step, which is what the cache saves."""
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    g = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    ids = list(prompt)
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(torch.tensor([ids[-block:]], device=device))[:, -1]
        else:
            if cache is None or cache.length >= block:
                # (Re)fill the cache; past the context, keep the most recent half and continue from there.
                cache = KVCache(model.cfg, 1, device, next(model.parameters()).dtype)
                context = ids[-(block // 2):] if len(ids) >= block else ids
                logits = model(torch.tensor([context], device=device), cache)[:, -1]
            else:
                logits = model(torch.tensor([ids[-1:]], device=device), cache)[:, -1]
        nxt = int(sample_next(logits, temperature, top_k, top_p, g)[0, 0])
        ids.append(nxt)
        yield nxt


def generate_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop: tuple[str, ...] = (),
                  truncate: bool = False) -> Iterator[str]:
    """Yield decoded text as it is generated; stops at the end-of-text token or a stop string."""
    ids = tokenizer.encode(prompt)
    block = model.cfg.block_size
    if len(ids) >= block:
        if not truncate:
            raise UserError(f"the prompt is {len(ids)} tokens; the model's context is {block}",
                            "shorten the prompt, or pass --truncate to keep its last tokens")
        ids = ids[-(block - 1):]
    if not ids:
        ids = [tokenizer.eot_id]  # an empty prompt starts a fresh document
    out: list[int] = []
    shown = ""
    for t in generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, seed):
        if t == tokenizer.eot_id:
            break
        out.append(t)
        text = tokenizer.decode(out)
        hit = min((text.find(s) for s in stop if s and s in text), default=-1)
        if hit >= 0:
            yield text[len(shown):hit] if hit > len(shown) else ""
            return
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            continue
        # Hold back a tail that may be the start of a stop string: it is not shown until it cannot be.
        hold = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = text[:len(text) - hold]
        if len(safe) > len(shown):
            yield safe[len(shown):]
            shown = safe
    if len(shown) < len(text := tokenizer.decode(out)):
        yield text[len(shown):]
