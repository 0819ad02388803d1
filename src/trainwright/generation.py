"""Text from a language model (`predict --prompt`): the prompt's tokens, then one sampled token at a time."""

from __future__ import annotations

import torch
from torch import nn


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
        logits = model(tokens[:, -context:])[0, -1].float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
        new.append(token)
        tokens = torch.cat([tokens, torch.tensor([[token]], device=device)], dim=1)
    return new
