"""A test double of ComfyUI_ExtraModels' SANA attention, so the engine is tested without ExtraModels.

``LiteLA`` repeats the math of ``LiteLA`` in ExtraModels' ``Sana/models/sana_blocks.py`` (city96 and
the Efficient-Large-Model fork hold the same class): a fused qkv projection, optional q/k RMS norms,
heads of ``dim`` channels, ReLU kernel, ``attn_matmul`` with v padded by a row of ``PAD_VAL`` = 1 and
the last row as the normaliser, then ``proj``. Upstream subclasses timm's ``Attention`` for ``qkv`` and
``proj``; plain Linear layers give the same computation. ``TinySanaMS`` mimics ``SanaMS``: a
``patch_size`` attribute, ``blocks[i].attn`` LiteLA modules and ComfyUI's diffusion-model call.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LiteLA(nn.Module):
    """Lightweight linear attention, as upstream (``eps`` 1e-8 is what SanaMS blocks pass)."""

    PAD_VAL = 1

    def __init__(self, in_dim: int, out_dim: int, heads: int, eps: float = 1e-8, qk_norm: bool = False):
        super().__init__()
        self.qkv = nn.Linear(in_dim, in_dim * 3, bias=False)
        self.proj = nn.Linear(in_dim, in_dim)
        self.heads = heads
        self.dim = out_dim // heads
        self.eps = eps
        self.kernel_func = nn.ReLU(inplace=False)
        self.q_norm = nn.RMSNorm(in_dim, eps=1e-5) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(in_dim, eps=1e-5) if qk_norm else nn.Identity()

    def attn_matmul(self, q, k, v: torch.Tensor) -> torch.Tensor:
        q = self.kernel_func(q)  # B, h, h_d, N
        k = self.kernel_func(k)

        q, k, v = q.float(), k.float(), v.float()

        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=LiteLA.PAD_VAL)
        vk = torch.matmul(v, k)
        out = torch.matmul(vk, q)

        if out.dtype in [torch.float16, torch.bfloat16]:
            out = out.float()
        return out[:, :, :-1] / (out[:, :, -1:] + self.eps)

    def forward(self, x: torch.Tensor, mask=None, HW=None, block_id=None) -> torch.Tensor:
        B, N, C = x.shape

        qkv = self.qkv(x).reshape(B, N, 3, C)
        q, k, v = qkv.unbind(2)
        dtype = q.dtype

        q = self.q_norm(q).transpose(-1, -2)  # (B, N, C) -> (B, C, N)
        k = self.k_norm(k).transpose(-1, -2)
        v = v.transpose(-1, -2)

        q = q.reshape(B, C // self.dim, self.dim, N)  # (B, h, h_d, N)
        k = k.reshape(B, C // self.dim, self.dim, N).transpose(-1, -2)  # (B, h, N, h_d)
        v = v.reshape(B, C // self.dim, self.dim, N)  # (B, h, h_d, N)

        out = self.attn_matmul(q, k, v).to(dtype)

        out = out.view(B, C, N).permute(0, 2, 1)  # B, N, C
        return self.proj(out)


class TinyBlock(nn.Module):
    def __init__(self, width: int, heads: int, text_dim: int, qk_norm: bool) -> None:
        super().__init__()
        self.attn = LiteLA(width, width, heads, qk_norm=qk_norm)
        self.text = nn.Linear(text_dim, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.text(context.mean(1, keepdim=True))


class TinySanaMS(nn.Module):
    """ComfyUI call convention ``forward(x, timesteps, context, **kwargs)`` like ExtraModels' SanaMS."""

    def __init__(
        self, channels: int = 4, width: int = 16, heads: int = 2, depth: int = 2, qk_norm: bool = False
    ):
        super().__init__()
        self.patch_size = 1
        self.x_embedder = nn.Linear(channels, width)
        self.blocks = nn.ModuleList(TinyBlock(width, heads, 8, qk_norm) for _ in range(depth))
        self.final_layer = nn.Linear(width, channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, **kwargs):
        b, c, h, w = x.shape
        tokens = self.x_embedder(x.flatten(2).transpose(1, 2)) + timesteps.view(-1, 1, 1) / 1000
        for block in self.blocks:
            tokens = block(tokens, context)
        return self.final_layer(tokens).transpose(1, 2).reshape(b, c, h, w)


def tiny_sana_ms(**kwargs) -> TinySanaMS:
    """Seeded with 0, so every test that builds it gets the same weights."""
    torch.manual_seed(0)
    return TinySanaMS(**kwargs).eval()
