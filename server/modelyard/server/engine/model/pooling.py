"""Sentence embeddings: mean pooling over real tokens, L2-normalised (sentence-transformers' recipe)."""

from __future__ import annotations

import torch


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``last_hidden_state`` we pool: the base model under a causal-LM head."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def right_pad(batch: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in batch)
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in batch], device=device)
    lengths = torch.tensor([len(row) for row in batch], device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    return ids, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.float() * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)


def embed_batch(
    model: torch.nn.Module, batch: list[list[int]], pad_id: int, device: torch.device
) -> torch.Tensor:
    ids, mask = right_pad(batch, pad_id, device)
    out = encoder_of(model)(input_ids=ids, attention_mask=mask)
    return mean_pool(out.last_hidden_state, mask)
