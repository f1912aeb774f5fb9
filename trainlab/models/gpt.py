"""A decoder-only Transformer (GPT) for next-token prediction, with a KV cache for generation.

    token embedding -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> linear head (tied to the embedding)

Attention is causal multi-head self-attention through torch's scaled_dot_product_attention (flash / memory-
efficient kernels where the device has them). Positions are rotary (RoPE, Su et al., 2021) or learned.
The MLP is GELU (GPT-2) or SwiGLU (Shazeer, 2020), optionally a mixture of experts with top-k routing and the
Switch Transformer load-balancing loss (Fedus et al., 2021). Initialization follows GPT-2: N(0, 0.02), with the
projections that write into the residual stream scaled by 1/sqrt(2 * n_layer).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable
from trainlab.errors import UserError
from trainlab.models import lora as lora_lib


class GPTConfig(NetworkTable):
    kind: Literal["gpt"] = "gpt"
    n_layer: PositiveInt = 4  # Transformer blocks
    n_head: PositiveInt = 4  # attention heads (n_embd must split into n_head heads of an even width)
    n_embd: PositiveInt = 128  # residual stream width
    dropout: float = Field(0.0, ge=0, lt=1)
    pos: Literal["rope", "learned"] = "rope"  # rotary or learned absolute positions
    norm: Literal["rms", "layer"] = "rms"  # RMSNorm (Llama) or LayerNorm (GPT-2)
    activation: Literal["swiglu", "gelu"] = "swiglu"  # the MLP: SwiGLU (Llama) or GELU (GPT-2)
    mlp_ratio: float = Field(4.0, gt=0)  # MLP hidden width / n_embd (x 2/3 for swiglu)
    bias: bool = False  # biases in linear layers and LayerNorm
    norm_eps: float = Field(0.0, ge=0)  # the norms' epsilon (0 = 1e-6 for RMSNorm, 1e-5 for LayerNorm)
    rope_base: float = Field(10000.0, gt=0)  # RoPE's base: frequency_i = base^(-2i / head width)
    tie_weights: bool = True  # the output head shares the token embedding
    moe_experts: int = Field(0, ge=0)  # experts per MLP (0 = dense)
    moe_top_k: PositiveInt = 2  # experts each token is routed to
    # "lm": next-token logits (pre-training); "classify": one class vector per text, pooled from the hidden
    # states of its real tokens (fine-tuning on labelled text; the head is new, the trunk can be pre-trained);
    # "reward": one scalar per text, from its last real token (a reward model, trained on preference pairs)
    head: Literal["lm", "classify", "reward"] = "lm"
    pooling: Literal["last", "mean"] = "last"  # classify: the last real token's state, or the mean over tokens
    value_head: bool = False  # a second head: a value per position (the critic of PPO), beside the lm head
    lora: lora_lib.LoRAConfig = lora_lib.LoRAConfig()  # low-rank adapters (rank 0 = train every weight)

    def outputs(self) -> set[str]:
        out = {"lm": {"token_logits"}, "classify": {"predictions"}, "reward": {"scores"}}[self.head]
        return out | {"hidden_states"} | ({"values"} if self.value_head else set())

    def own_objective(self) -> str:
        return {"lm": "next_token", "classify": "supervised", "reward": "reward"}[self.head]

    @model_validator(mode="after")
    def _shapes(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"model.n_embd = {self.n_embd} must split into model.n_head = {self.n_head} heads of "
                             "an even width (pick n_embd divisible by 2 * n_head)")
        if self.value_head and self.head != "lm":
            raise ValueError(f"model.value_head needs model.head = 'lm' (a policy); this model's head is '{self.head}'")
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ValueError(f"model.moe_top_k = {self.moe_top_k} exceeds model.moe_experts = {self.moe_experts} "
                             "(route to at most as many experts as there are)")
        return self


@registry.model("gpt", GPTConfig, consumes={"tokens", "conversations", "preferences", "prompts"},
                produces={"token_logits", "hidden_states", "predictions", "scores", "values"}, objective="next_token")
def build(cfg: GPTConfig, info: dict) -> nn.Module:
    """Decoder-only Transformer (RoPE or learned positions, RMSNorm or LayerNorm, SwiGLU or GELU, MoE)."""
    num_classes = 1 if cfg.head == "reward" else head_classes(cfg, info, "lm")
    model = GPT(cfg, info["vocab_size"], info["block_size"], num_classes, info.get("pad_id"))
    keep = (("head.",) if cfg.head != "lm" else ()) + (("value_head.",) if cfg.value_head else ())
    lora_lib.apply(model, cfg.lora, keep_trainable=keep)
    return model


class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich, 2019): LayerNorm without centring, one reduction cheaper."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.n_embd, cfg.norm_eps or 1e-6)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps or 1e-5, bias=cfg.bias)


def rope_tables(block_size: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, (T, head_dim / 2): frequency_i = base^(-2i / head_dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1_i, x2_i) of x (B, nh, T, hs) by its position's angle; halves layout (GPT-NeoX).
    cos, sin: (T, hs/2), or (B, 1, T, hs/2) when every row has positions of its own (left padding)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of every layer for the tokens seen so far: (B, nh, block_size, hs) each, filled to `length`.
    `pad` (B,): how many left-padding positions each row starts with; they are never attended to."""

    def __init__(self, model: "GPT", batch: int, device, dtype, pad: torch.Tensor | None = None):
        cfg = model.cfg
        shape = (batch, cfg.n_head, model.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0
        self.pad = pad


def attention_mask(t: int, start: int, pad: torch.Tensor | None, device) -> torch.Tensor | None:
    """Which keys each query may see: causal over positions 0..start+t-1, minus each row's left padding.
    None when plain causal attention (is_causal) or full attention to the cache does the job. (B or 1, 1, t, S)."""
    if pad is None and (start == 0 or t == 1):
        return None
    q = torch.arange(start, start + t, device=device)[:, None]  # (t, 1) absolute positions of the queries
    k = torch.arange(start + t, device=device)[None, :]  # (1, S)
    mask = k <= q  # causal
    if pad is not None:
        # A padding query sees itself, so that no row is all -inf (which gives NaN); real tokens never see padding.
        mask = (mask & (k >= pad[:, None, None])) | (k == q)
        return mask[:, None]  # (B, 1, t, S)
    return mask


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.proj.residual_scaled = True

    def forward(self, x, rope, mask=None, cache: KVCache | None = None, layer: int = 0):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (a.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for a in (q, k, v))  # (B, nh, T, hs)
        start = cache.length if cache is not None else 0
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            cache.k[layer][:, :, start:start + t] = k
            cache.v[layer][:, :, start:start + t] = v
            k, v = cache.k[layer][:, :, :start + t], cache.v[layer][:, :, :start + t]
        causal = mask is None and start == 0  # the usual case: attend to self and the past
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        # SwiGLU has three matrices instead of two: 2/3 of the hidden width keeps the parameter count.
        hidden = int(cfg.mlp_ratio * cfg.n_embd * (2 / 3 if self.swiglu else 1))
        hidden = (hidden + 63) // 64 * 64 if hidden > 64 else hidden
        self.up = nn.Linear(cfg.n_embd, hidden * (2 if self.swiglu else 1), bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.down.residual_scaled = True

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            a, g = h.chunk(2, dim=-1)
            return self.down(F.silu(g) * a)
        return self.down(F.gelu(h, approximate="tanh"))


class MoE(nn.Module):
    """Mixture of experts: a router sends each token to its top-k of E expert MLPs, weighted by the router's
    renormalized probabilities; only those k run, so compute per token stays that of k MLPs.

    Load balancing (Switch Transformer): aux = E * sum_e f_e * P_e, with f_e the fraction of routing slots that
    went to expert e and P_e the mean router probability of e; it is 1 when the load is uniform.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.top_k, self.n_experts = cfg.moe_top_k, cfg.moe_experts
        self.router = nn.Linear(cfg.n_embd, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.moe_experts))
        self.aux_loss = torch.zeros(())
        self.load = torch.zeros(cfg.moe_experts)

    def forward(self, x):
        b, t, c = x.shape
        flat = x.reshape(-1, c)  # (N, C)
        probs = self.router(flat).float().softmax(-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            # Every expert runs, even on no rows: its parameters then get (zero) gradients on every process,
            # which DDP and FSDP need to reduce the same tensors everywhere.
            out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        frac = torch.bincount(chosen.flatten(), minlength=self.n_experts).float() / chosen.numel()
        self.aux_loss = self.n_experts * (frac * probs.mean(0)).sum()
        self.load = frac.detach()
        return out.view(b, t, c)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1, self.attn = _norm(cfg), CausalSelfAttention(cfg)
        self.norm2 = _norm(cfg)
        self.mlp = MoE(cfg) if cfg.moe_experts else MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache=None, layer=0):
        x = x + self.drop(self.attn(self.norm1(x), rope, mask, cache, layer))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    """GPT(cfg, vocab_size, block_size): `forward` gives next-token logits; `hidden` the final (normed) hidden
    states, for heads of other kinds (a value or reward head, a classifier).

    With cfg.head = "classify" (and num_classes), `forward(idx)` gives (B, num_classes) logits for right-padded
    texts: padding is `pad_id`, and since attention is causal, padding after a text changes none of its states;
    the text's vector is its last real token's state ("last") or the mean over its tokens ("mean"). With
    cfg.head = "reward" it gives (B,) scores, read at each text's last real token. With cfg.value_head,
    `values(h)` maps hidden states (B, T, C) to a value per position (B, T)."""

    def __init__(self, cfg: GPTConfig, vocab_size: int, block_size: int, num_classes: int = 0,
                 pad_id: int | None = None):
        super().__init__()
        self.cfg, self.vocab_size, self.block_size = cfg, vocab_size, block_size
        self.classify, self.pad_id = cfg.head != "lm", pad_id  # a head over pooled states (classes, a reward)
        self.generates = not self.classify  # a language model: `trainlab sample` and Predictor.generate
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = _norm(cfg)
        if self.classify:
            self.head_drop = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(cfg.n_embd, num_classes)
        else:
            self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
            if cfg.tie_weights:
                self.head.weight = self.wte.weight  # one matrix to read tokens in and out (Press & Wolf, 2017)
        if cfg.value_head:
            self.value_head = nn.Linear(cfg.n_embd, 1)
        if cfg.pos == "rope":
            cos, sin = rope_tables(block_size, cfg.n_embd // cfg.n_head, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "residual_scaled", False) else 0.02
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> final hidden states (B, T, C), after the last norm.
        With a cache, idx continues the cached tokens. `pad` (B,): rows are left-padded by that many positions
        (ignored as keys; each row's positions start at its first real token); with a cache it comes from there."""
        b, t = idx.shape
        start = cache.length if cache is not None else 0
        if start + t > self.block_size:
            raise ValueError(f"{start + t} tokens exceed the context of {self.block_size}")
        if cache is not None:
            pad = cache.pad
        pos = torch.arange(start, start + t, device=idx.device)  # (T,)
        if pad is not None:
            pos = (pos[None] - pad[:, None]).clamp_min(0)  # (B, T): each row counts from its first real token
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        x = self.drop(x)
        rope = None
        if self.wpe is None:
            rope = (self.rope_cos[pos], self.rope_sin[pos])  # (T, hs/2), or (B, T, hs/2) per row
            if pad is not None:
                rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, T, hs/2): broadcast over heads
        mask = attention_mask(t, start, pad, idx.device)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i)
        if cache is not None:
            cache.length += t
        return self.norm(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, pad: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab). See `hidden` for the cache and left padding.
        A classifier: right-padded texts (B, T) -> class logits (B, num_classes)."""
        if self.classify:
            pooling = "last" if self.cfg.head == "reward" else self.cfg.pooling
            out = self.head(self.head_drop(pool(self.hidden(idx), idx, self.pad_id, pooling)))
            return out[:, 0] if self.cfg.head == "reward" else out
        return self.head(self.hidden(idx, cache, pad))

    def values(self, h: torch.Tensor) -> torch.Tensor:
        """The value head on hidden states (B, T, C) -> (B, T)."""
        return self.value_head(h)[..., 0]

    def lm_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits whatever the head: a classifier with tied weights still reads tokens out through
        its embedding (what replaying pre-training text and measuring forgetting need)."""
        if not self.classify:
            return self(idx)
        if not self.cfg.tie_weights:
            raise UserError("this classifier has no language-model head (model.tie_weights = false)",
                            "replay pre-training data with model.tie_weights = true")
        return F.linear(self.hidden(idx), self.wte.weight)

    # ------------------------------------------------------------------ accounting
    def head_prefixes(self) -> tuple[str, ...]:
        """Parameters that belong to the task head rather than the trunk (new when the head changes)."""
        return ("head.", "value_head.") if self.cfg.value_head else ("head.",)

    def moe_layers(self) -> list[MoE]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def aux_loss(self) -> torch.Tensor:
        layers = self.moe_layers()
        return sum(m.aux_loss for m in layers) / len(layers) if layers else torch.zeros(())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x the weights each token multiplies (forward 2, backward 4), with only
        the k active experts of an MoE layer, plus attention's 12 * n_layer * n_embd * T (PaLM, appendix B)."""
        c = self.cfg
        per_layer = sum(p.numel() for n, p in self.blocks[0].named_parameters() if p.ndim == 2 and "experts" not in n)
        if c.moe_experts:
            expert = sum(p.numel() for p in self.blocks[0].mlp.experts[0].parameters() if p.ndim == 2)
            per_layer += c.moe_top_k * expert
        matmul = c.n_layer * per_layer + c.n_embd * self.vocab_size  # + the output head
        return 6 * matmul + 12 * c.n_layer * c.n_embd * self.block_size


def head_classes(cfg, info: dict, other_head: str) -> int:
    """The classes a `head = "classify"` model predicts (0 for other heads); labelled text of 2 or more."""
    if cfg.head != "classify":
        return 0
    num_classes = info.get("num_classes", 0) if info.get("task") == "classification" else 0
    if num_classes < 2:
        raise UserError(f"model.head = 'classify' needs labelled text with 2 or more classes; this data is "
                        f"'{info.get('task')}'" + (f" with {num_classes} class" if num_classes else ""),
                        "use a labelled text source (data.source = 'stdlib_classes' or 'jsonl_classes'), "
                        f"or model.head = '{other_head}'")
    return num_classes


def pool(h: torch.Tensor, idx: torch.Tensor, pad_id: int | None, how: str) -> torch.Tensor:
    """One vector per right-padded row of hidden states h (B, T, C): "last" real token, "mean" over the real
    tokens, or "first" (BERT's [CLS]). Real tokens are those that are not `pad_id` (all, when it is None)."""
    if pad_id is None:
        real = torch.ones_like(idx, dtype=torch.bool)
    else:
        real = idx != pad_id
    if how == "first":
        return h[:, 0]
    if how == "last":
        last = (real.sum(1) - 1).clamp_min(0)  # right padding: the real tokens come first
        return h[torch.arange(len(h), device=h.device), last]
    w = real.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1)
