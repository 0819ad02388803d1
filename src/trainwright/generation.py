"""Text from a language model (`predict --prompt`): the prompt's tokens, then one sampled token at a time.
Any model that maps token ids (batch, time) to next-token logits (batch, time, vocabulary) generates: `gpt`,
or a transformers causal LM (its ModelOutput's `logits`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def model_context(model: nn.Module) -> int | None:
    """The most tokens the model sees at once: `gpt`'s `context`, a transformers model's
    `max_position_embeddings`; None when it does not say."""
    config = getattr(model, "config", None)
    context = getattr(model, "context", None) or getattr(config, "max_position_embeddings", None)
    return int(context) if isinstance(context, int) else None


def vocabulary_size(model: nn.Module) -> int | None:
    """The number of token ids the model reads (its input embedding's rows), where it says."""
    embeddings = getattr(model, "get_input_embeddings", None)
    embedding = embeddings() if callable(embeddings) else getattr(model, "tokens", None)
    return embedding.num_embeddings if isinstance(embedding, nn.Embedding) else None


@torch.no_grad()
def generate(
    model: nn.Module, ids: torch.Tensor, length: int, temperature: float, context: int, seed: int = 0
) -> list[int]:
    """`length` new token ids after `ids` (1-D), each sampled from the model's next-token distribution at
    `temperature` (0: the most likely token, greedy), seeing at most the last `context` tokens."""
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = ids.to(device).reshape(1, -1)
    new: list[int] = []
    for _ in range(length):
        outputs = model(tokens[:, -context:])
        logits = (outputs["logits"] if isinstance(outputs, Mapping) else outputs)[0, -1].float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
        new.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]], device=device)], dim=1)
    return new
