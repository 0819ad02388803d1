"""`gpt`: a decoder-only transformer in the manner of nanoGPT (pre-norm blocks of causal self-attention and
an MLP, learned positions, the token embedding tied to the output layer by default).

It maps token ids (batch, time) to logits (batch, time, vocab_size): a sequence task's outputs, scored
by `cross_entropy` as they are. `GPTBlock` is its default unit under FSDP (`_no_split_modules`, as
transformers models name theirs); the tied embedding and output layer stay with the model as a whole."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainwright.errors import UserError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position sees itself and the positions before it."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.heads, self.dropout = heads, dropout
        self.proj_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = (
            part.view(batch, time, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj_dropout(self.proj(y.transpose(1, 2).contiguous().view(batch, time, width)))


class GPTBlock(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)): one layer, and one FSDP unit."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token ids (batch, time <= context) -> next-token logits (batch, time, vocab_size)."""

    _no_split_modules: ClassVar[list[str]] = ["GPTBlock"]  # the default FSDP unit (fsdp.default_unit_classes)

    def __init__(
        self, vocab_size: int, context: int, layers: int, heads: int, width: int, dropout: float,
        tie_embeddings: bool,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.context = context
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(GPTBlock(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)
        for name, parameter in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("attention.proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * layers))
        if tie_embeddings:
            self.head.weight = self.tokens.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        time = ids.shape[1]
        if time > self.context:
            raise ValueError(f"a sequence of {time} tokens is longer than the model's context ({self.context})")
        positions = torch.arange(time, device=ids.device)
        x = self.dropout(self.tokens(ids) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def check_gpt_arguments(kwargs: dict[str, Any]) -> None:
    """The values `gpt` refuses (it calls this, and so does `trainwright check`)."""
    for key in ("vocab_size", "context", "layers", "heads", "width"):
        if kwargs.get(key) is not None and kwargs[key] < 1:
            raise UserError(f"model.{key} must be at least 1, got {kwargs[key]}")
    width, heads = kwargs.get("width", 128), kwargs.get("heads", 4)
    if width % heads:
        raise UserError(f"model.width ({width}) must be a multiple of model.heads ({heads})")
    if not 0 <= kwargs.get("dropout", 0.0) < 1:
        raise UserError(f"model.dropout must be at least 0 and below 1, got {kwargs['dropout']}")


def gpt(
    vocab_size: int | None = None, context: int = 128, layers: int = 4, heads: int = 4, width: int = 128,
    dropout: float = 0.0, tie_embeddings: bool = True,
) -> GPT:
    """The `gpt` model of recipes; `vocab_size` None: the data set's (its sequence task's number of classes)."""
    check_gpt_arguments({"vocab_size": vocab_size, "context": context, "layers": layers, "heads": heads,
                         "width": width, "dropout": dropout})
    if vocab_size is None:
        raise ValueError("vocab_size is not known: give model.vocab_size, or train on a sequence data set (data: text)")
    return GPT(vocab_size, context, layers, heads, width, dropout, tie_embeddings)
