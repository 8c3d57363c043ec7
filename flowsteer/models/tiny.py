"""Tiny random-weight checkpoints of the real model families, built from configs (no download).

They are saved with each library's own ``save_pretrained`` and loaded back by flowsteer through the same
code path as a user's real checkpoint, which is what the tests and benchmarks need on a machine that cannot
reach the Hugging Face hub.  Requires the ``diffusers`` extra (``pip install flowsteer[diffusers]``).

* :func:`save_tiny_unet2d`: a diffusers ``UNet2DModel`` (pixel space);
* :func:`save_tiny_sd3_pipeline`: a Stable Diffusion 3 pipeline folder (``SD3Transformer2DModel``, a
  ``AutoencoderKL``, two CLIP text encoders and their tokenizers, the flow-matching Euler scheduler; no T5,
  which SD3's pipeline replaces by zeros);
* :func:`save_tiny_clip`: a ``CLIPModel`` with its ``CLIPProcessor``, for the CLIP reward.

The tokenizers are byte-level BPE with no merges: every character is a token, so any prompt tokenizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_MAX_TOKENS = 16


def _byte_level_vocab() -> dict[str, int]:
    from tokenizers import pre_tokenizers

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return vocab


def tiny_clip_tokenizer():
    """A CLIP tokenizer over single bytes (``len`` = 514), ``model_max_length`` = 16."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=TINY_MAX_TOKENS)


def _text_config(*, hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(_byte_level_vocab()), hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TINY_MAX_TOKENS,
                          projection_dim=projection, bos_token_id=512, eos_token_id=513, pad_token_id=513)


def save_tiny_unet2d(path: str | Path, *, channels: int = 1, size: int = 8, seed: int = 0) -> Path:
    """Save a ~0.1M-parameter ``UNet2DModel`` (``channels`` x ``size`` x ``size``) to ``path``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8)
    unet.save_pretrained(str(path))
    return Path(path)


def save_tiny_sd3_pipeline(path: str | Path, *, latent_size: int = 8, seed: int = 0) -> Path:
    """Save a tiny SD3 pipeline folder: 8x8x4 latents, 16x16 RGB images, prompts of <= 16 tokens."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=latent_size, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
                                        pos_embed_max_size=latent_size)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=2 * latent_size,
                        scaling_factor=1.5305, shift_factor=0.0609)
    encoders = [CLIPTextModelWithProjection(_text_config(hidden=16, projection=16)) for _ in range(2)]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders[0], tokenizer=tiny_clip_tokenizer(), text_encoder_2=encoders[1],
        tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(str(path))
    return Path(path)


def save_tiny_clip(path: str | Path, *, image_size: int = 16, seed: int = 0) -> Path:
    """Save a tiny ``CLIPModel`` and its ``CLIPProcessor`` (images resized to ``image_size``)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    text = _text_config(hidden=16, projection=16)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=4, projection_dim=16)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                                 crop_size={"height": image_size, "width": image_size}),
                              tokenizer=tiny_clip_tokenizer())
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return Path(path)
