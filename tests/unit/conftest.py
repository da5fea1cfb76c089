"""Fixtures shared by the engine's sampling tests: the tiny random SANA transformer and a prompt pair."""

import pytest
import torch
from diffusers import SanaTransformer2DModel

from lab.fixtures import tiny_transformer


@pytest.fixture(scope="module")
def model() -> SanaTransformer2DModel:
    return tiny_transformer()


@pytest.fixture(scope="module")
def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embeddings [1, 6, 16] for the tiny transformer's 16-d caption projection."""
    gen = torch.Generator().manual_seed(7)
    return torch.randn(1, 6, 16, generator=gen), torch.randn(1, 6, 16, generator=gen)
