"""Text from a language model (`predict --prompt`): the prompt's tokens, then one sampled token at a time,
each given out as soon as it is sampled (the model sees at most its last `context` tokens, so every token
costs the same however long the text grows). Any model that maps token ids (batch, time) to next-token logits
(batch, time, vocabulary) generates: `gpt`, or a transformers causal LM (its ModelOutput's `logits`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

MAX_LENGTH = 100_000  # tokens one command generates at most (--length)
_PENDING = 64  # tokens decoded together at most before a piece of text is final


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
) -> Iterator[int]:
    """Yield `length` new token ids after `ids` (1-D), one at a time, each sampled from the model's next-token
    distribution at `temperature` (0: the most likely token, greedy), seeing at most the last `context` tokens."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = ids.to(device).reshape(1, -1)[:, -context:]
    for _ in range(length):
        outputs = model(tokens)
        logits = (outputs["logits"] if isinstance(outputs, Mapping) else outputs)[0, -1].float().cpu()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator))
        yield token
        kept = tokens[:, max(0, tokens.shape[1] - context + 1):]
        tokens = torch.cat([kept, torch.tensor([[token]], device=device)], dim=1)


def text_pieces(tokens: Iterable[int], decode: Callable[[list[int]], str]) -> Iterator[str]:
    """The text of `tokens` piece by piece as they come: a character cut between two tokens (one byte of a
    UTF-8 sequence) waits for the rest; the text decoded so far is final at a line's end or every _PENDING
    tokens (a tokenizer may join a token with its neighbours)."""
    pending: list[int] = []
    given = ""
    for token in tokens:
        pending.append(token)
        text = decode(pending)
        if text.endswith("\ufffd") and len(pending) < _PENDING:
            continue
        yield text[len(given):]
        given = text
        if text.endswith("\n") or len(pending) >= _PENDING:
            pending, given = [], ""
    if pending:
        yield decode(pending)[len(given):]
