"""Builders of the small SANA-architecture parts the trainer starts from (real diffusers/transformers
classes).

The embedded model is made of these: a word-level tokenizer over the seam-lab vocabulary, a tiny frozen
Gemma-2 text encoder, a small DC-AE and a small SanaTransformer2DModel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import seamlab


def corpus(n: int = 4000) -> list[str]:
    """Tokenizer training text: sampled prompts plus every word the generator can emit."""
    return [*seamlab.sample_scenes(n, seed=7).prompts, " ".join(seamlab.prompt_vocabulary())]


def build_tokenizer(corpus: list[str]):
    """A real word-level tokenizer (tokenizers library) over the seam-lab vocabulary, as a transformers
    PreTrainedTokenizerFast with Gemma's special tokens (<pad>=0, <eos>=1, <bos>=2, <unk>=3)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=300,
    )


def build_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A tiny Gemma-2 encoder (random init, kept frozen: the transformer learns to read it)."""
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Gemma2Model(cfg)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], max_length: int = 32
) -> tuple[Tensor, Tensor]:
    """Prompt embeddings [B, L, D] and attention mask [B, L] the way SanaPipeline makes them."""
    tok = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    out = text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
    return out, tok.attention_mask


def build_autoencoder(latent_channels: int = 16, channels: tuple[int, ...] = (16, 32, 64, 64)):
    """Small DC-AE (ResBlocks only; compression 2^(len(channels)-1) = 8x)."""
    from diffusers import AutoencoderDC

    n = len(channels)
    return AutoencoderDC(
        latent_channels=latent_channels,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        encoder_layers_per_block=(1,) * n,
        decoder_layers_per_block=(1,) * n,
        encoder_qkv_multiscales=((),) * n,
        decoder_qkv_multiscales=((),) * n,
    )


def build_transformer(
    latent_channels: int = 16,
    caption_channels: int = 64,
    hidden: int = 128,
    heads: int = 4,
    layers: int = 4,
    interpolation_scale: float | None = None,
):
    """Small SanaTransformer2DModel: patch 1 on the latent; no positional embedding (like SANA 1K) unless
    ``interpolation_scale`` is set: then SANA 2K/4K's sin-cos PE over a base grid of ``sample_size`` cells."""
    from diffusers import SanaTransformer2DModel

    return SanaTransformer2DModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        num_layers=layers,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=hidden // heads,
        cross_attention_dim=hidden,
        caption_channels=caption_channels,
        mlp_ratio=2.5,
        sample_size=8,
        patch_size=1,
        interpolation_scale=interpolation_scale,
    )
