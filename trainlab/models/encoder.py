"""A bidirectional Transformer encoder (BERT, Devlin et al., 2019): every token sees every other token.

    token + position (+ segment) embedding -> LayerNorm -> N x [x = norm1(x + attn(x)); x = norm2(x + mlp(x))]

Post-norm blocks, learned positions, exact GELU and biases everywhere: the layout of BERT-family checkpoints,
so a Hugging Face BERT (e.g. all-MiniLM-L6-v2) loads into it tensor for tensor (trainlab.hf). Two heads:

    head = "mlm"        masked-language-model logits (B, T, vocab): dense -> GELU -> LayerNorm -> the token
                        embedding transposed (tied) + a bias, as BERT's pre-training head
    head = "classify"   class logits (B, K) pooled over the real tokens ("mean"), the first ("first", [CLS])
                        or the last

Padding (`pad_id` from the data) is never attended to.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from trainlab import registry
from trainlab.config import NetworkTable
from trainlab.errors import UserError
from trainlab.models import lora as lora_lib
from trainlab.models.gpt import head_classes, pool


class EncoderConfig(NetworkTable):
    kind: Literal["encoder"] = "encoder"
    n_layer: PositiveInt = 4  # Transformer blocks
    n_head: PositiveInt = 4  # attention heads (n_embd must split into n_head heads)
    n_embd: PositiveInt = 128  # hidden width
    mlp_ratio: float = Field(4.0, gt=0)  # MLP hidden width / n_embd
    dropout: float = Field(0.1, ge=0, lt=1)
    max_positions: PositiveInt = 512  # rows of the learned position table (data.block_size must fit)
    type_vocab_size: int = Field(2, ge=0)  # segment embeddings (BERT's sentence A/B; 0 = none)
    norm_eps: float = Field(1e-12, gt=0)  # LayerNorm epsilon (BERT's 1e-12)
    # "mlm": masked-token logits (pre-training); "classify": one class vector per text (fine-tuning)
    head: Literal["mlm", "classify"] = "mlm"
    pooling: Literal["mean", "first", "last"] = "mean"  # classify: mean of real tokens, first ([CLS]) or last
    lora: lora_lib.LoRAConfig = lora_lib.LoRAConfig()  # low-rank adapters (rank 0 = train every weight)

    def outputs(self) -> set[str]:
        return {"masked_token_logits", "hidden_states"} if self.head == "mlm" else {"predictions", "hidden_states"}

    def own_objective(self) -> str:
        return "masked_lm" if self.head == "mlm" else "supervised"

    @model_validator(mode="after")
    def _shapes(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd = {self.n_embd} must split into model.n_head = {self.n_head} heads "
                             "(pick n_embd divisible by n_head)")
        return self


@registry.model("encoder", EncoderConfig, consumes={"tokens"},
                produces={"masked_token_logits", "hidden_states", "predictions"}, objective="masked_lm")
def build(cfg: EncoderConfig, info: dict) -> nn.Module:
    """Bidirectional Transformer encoder (BERT): masked-LM pre-training or text classification."""
    if info["block_size"] > cfg.max_positions:
        raise UserError(f"data.block_size = {info['block_size']} is longer than the encoder's "
                        f"model.max_positions = {cfg.max_positions}", "lower data.block_size")
    num_classes = head_classes(cfg, info, "mlm")
    model = Encoder(cfg, info["vocab_size"], num_classes, info.get("pad_id"))
    lora_lib.apply(model, cfg.lora, keep_trainable=model.head_prefixes() if cfg.head == "classify" else ())
    return model


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        c = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.q, self.k, self.v, self.proj = (nn.Linear(c, c) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (lin(x).view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.n_embd)
        self.up, self.down = nn.Linear(cfg.n_embd, hidden), nn.Linear(hidden, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # exact (erf) GELU, as BERT


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn, self.norm1 = SelfAttention(cfg), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp, self.norm2 = MLP(cfg), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


class MLMHead(nn.Module):
    """BERT's pre-training head: transform, then read out through the (tied) token embedding plus a bias."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int):
        super().__init__()
        self.dense, self.norm = nn.Linear(cfg.n_embd, cfg.n_embd), nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(h))), embedding, self.bias)


class Encoder(nn.Module):
    """Encoder(cfg, vocab_size, num_classes, pad_id): `hidden(idx)` (B, T, C); `forward` the head's logits."""

    def __init__(self, cfg: EncoderConfig, vocab_size: int, num_classes: int = 0, pad_id: int | None = None):
        super().__init__()
        self.cfg, self.vocab_size, self.pad_id = cfg, vocab_size, pad_id
        self.block_size = cfg.max_positions
        self.classify = cfg.head == "classify"
        c = cfg.n_embd
        self.wte = nn.Embedding(vocab_size, c)
        self.wpe = nn.Embedding(cfg.max_positions, c)
        self.wtt = nn.Embedding(cfg.type_vocab_size, c) if cfg.type_vocab_size else None
        self.emb_norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        if self.classify:
            self.head_drop = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(c, num_classes)
        else:
            self.mlm = MLMHead(cfg, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialization: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids (right-padded with pad_id: positions count from the first column) -> (B, T, C)."""
        b, t = idx.shape
        if t > self.cfg.max_positions:
            raise ValueError(f"{t} tokens exceed the encoder's {self.cfg.max_positions} positions")
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        if self.wtt is not None:
            x = x + self.wtt.weight[0]  # one segment: every token is sentence A
        x = self.drop(self.emb_norm(x))
        mask = None
        if self.pad_id is not None:
            real = idx != self.pad_id
            # Padding is never a key; a row that is all padding keeps its keys (no row may be all -inf).
            mask = (real | ~real.any(1, keepdim=True))[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.hidden(idx)
        if self.classify:
            return self.head(self.head_drop(pool(h, idx, self.pad_id, self.cfg.pooling)))
        return self.mlm(h, self.wte.weight)

    def head_prefixes(self) -> tuple[str, ...]:
        return ("head.",) if self.classify else ("mlm.",)

    def flops_per_token(self) -> float:
        c = self.cfg
        per_layer = sum(p.numel() for p in self.blocks[0].parameters() if p.ndim == 2)
        return 6 * (c.n_layer * per_layer + c.n_embd * self.vocab_size) + 12 * c.n_layer * c.n_embd * self.block_size
