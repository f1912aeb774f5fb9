"""Text generation from a trained GPT: KV cache, temperature, top-k, top-p, a seed, stop strings, streaming.

    for piece in generate_text(model, tokenizer, "def main(", max_new_tokens=200, temperature=0.8):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import re
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
def decode_steps(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, a (B,) tensor on the model's device, up to max_new_tokens times; the
    caller decides when to stop (nothing here waits for the host). Prompts of different lengths are left-padded:
    each row's positions start at its first real token and padding is never attended to.

    With the KV cache each step feeds one token per row; past the context the cache is refilled with the most
    recent half. Without it, the whole (cropped) sequence is recomputed every step, which is what the cache saves."""
    model.eval()
    param = next(model.parameters())
    device, block, b = param.device, model.block_size, len(prompts)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    seq = torch.zeros(b, longest + max_new_tokens, dtype=torch.long, device=device)  # left-padded prompts, then new
    for i, p in enumerate(prompts):
        seq[i, longest - len(p):longest] = torch.tensor(p, dtype=torch.long)
    lengths = [len(p) for p in prompts]
    pad = torch.tensor([longest - n for n in lengths], device=device) if len(set(lengths)) > 1 else None
    n, cache = longest, None

    def window_pad(cut: int) -> torch.Tensor | None:  # padding left in a window that drops the first `cut` columns
        return None if pad is None else (pad - cut).clamp_min(0)

    for _ in range(max_new_tokens):
        if not use_cache:
            start = max(0, n - block)
            logits = model(seq[:, start:n], pad=window_pad(start))[:, -1]
        elif cache is None or cache.length >= block:
            start = 0 if n < block else n - block // 2
            cache = KVCache(model, b, device, param.dtype, window_pad(start))
            logits = model(seq[:, start:n], cache)[:, -1]
        else:
            logits = model(seq[:, n - 1:n], cache)[:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)[:, 0]  # (B,)
        seq[:, n] = nxt
        n += 1
        yield nxt


def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, eos_id: int | None = None,
             check_every: int = 16) -> list[list[int]]:
    """Batched generation: each row's new tokens, ending before its first `eos_id`. Rows stop independently;
    the batch stops once every row has (checked every `check_every` tokens: the only wait for the device)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out = torch.zeros(len(prompts), max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    produced = 0
    for i, nxt in enumerate(decode_steps(model, prompts, max_new_tokens, temperature, top_k, top_p, g)):
        out[:, i] = nxt
        produced = i + 1
        if eos_id is not None:
            done |= nxt == eos_id
            if produced % check_every == 0 and bool(done.all()):
                break
    rows = out[:, :produced].tolist()
    return [r[:r.index(eos_id)] if eos_id is not None and eos_id in r else r for r in rows]


def generate_ids(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """One sequence, streamed: yield new token ids one at a time (each one waits for the device)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    for nxt in decode_steps(model, [list(prompt)], max_new_tokens, temperature, top_k, top_p, g, use_cache):
        yield int(nxt[0])


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|u|[ntr\\])")


def unescape(text: str) -> str:
    """Backslash escapes typed on a command line (`--stop "\\n\\n"`: the shell passes the backslashes):
    \\n, \\t, \\r, \\\\ and \\uXXXX; any other backslash stays as it is."""
    def one(m: re.Match) -> str:
        code = m.group(1)
        if code == "u":
            raise UserError(f"the escape \\u in '{text}' needs four hex digits",
                            "write e.g. \\u00a0 (or \\\\u for a backslash and a u)")
        return chr(int(code[1:], 16)) if code[0] == "u" else _ESCAPES[code]

    return _ESCAPE.sub(one, text)


def generate_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop: tuple[str, ...] = (),
                  truncate: bool = False) -> Iterator[str]:
    """Yield decoded text as it is generated; stops at the end-of-text token or a stop string."""
    ids = tokenizer.encode(prompt)
    block = model.block_size
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


def require_generator(model) -> None:
    """Only a GPT language model continues text (`GPT.generates`); an encoder's masked-LM head does not."""
    if not getattr(model, "generates", False):
        from trainlab.errors import UserError

        raise UserError("this run holds a masked language model (an encoder): it fills in hidden tokens from both "
                        "sides and cannot continue a text", "sample from a GPT run, e.g. stdlib-gpt")
