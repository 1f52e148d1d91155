"""Tiny random-weight Wan checkpoints, built from configs on the spot: no download, CPU-fast.

Each builder writes a real diffusers folder with ``save_pretrained`` (transformer, VAE, a UMT5
text encoder, a word-level tokenizer made with the ``tokenizers`` library, a flow scheduler), so
the backend's own loading code reads it exactly as it reads a published Wan checkpoint. The
shapes mirror diffusers' own Wan pipeline tests, shrunk until two steps take well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from peft import LoraConfig, get_peft_model_state_dict
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

TinyKind = Literal["t2v", "i2v", "flf2v", "ti2v", "a14b"]
"""Wan2.1 T2V, Wan2.1 I2V (with a CLIP image encoder), Wan2.1 FLF2V (I2V whose image embedding
takes two images), Wan2.2 TI2V-5B, Wan2.2 A14B (two experts)."""

TEXT_DIM = 32
_WORDS = [
    "a",
    "an",
    "the",
    "fox",
    "cat",
    "dog",
    "in",
    "on",
    "snow",
    "forest",
    "city",
    "night",
    "runs",
    "walks",
    "flies",
    "slowly",
    "camera",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A T5-style tokenizer (pad 0, eos 1, unk 2) over a few words, built offline."""
    vocab = {word: i for i, word in enumerate(["<pad>", "</s>", "<unk>", *_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


_CLIP_TOKENS = (32 // 8) ** 2 + 1
"""Tokens the tiny CLIP encoder yields per image (4x4 patches and a class token)."""


def _transformer(
    in_channels: int, out_channels: int, image_dim: int | None = None, pos_embed_seq_len: int | None = None
) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=image_dim,
        added_kv_proj_dim=16 if image_dim else None,
        pos_embed_seq_len=pos_embed_seq_len,
    )


def build_tiny_wan(path: Path, kind: TinyKind = "t2v") -> Path:
    """Write a tiny ``kind`` checkpoint to ``path`` and return ``path``."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=tokenizer.vocab_size,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    common = {"tokenizer": tokenizer, "text_encoder": text_encoder, "scheduler": scheduler}
    pipe: Any
    if kind == "ti2v":
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
        pipe = WanPipeline(**common, vae=vae, transformer=_transformer(48, 48), expand_timesteps=True)
    else:
        vae = AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        if kind == "t2v":
            pipe = WanPipeline(**common, vae=vae, transformer=_transformer(16, 16))
        elif kind == "a14b":
            pipe = WanPipeline(
                **common,
                vae=vae,
                transformer=_transformer(16, 16),
                transformer_2=_transformer(16, 16),
                boundary_ratio=0.875,
            )
        else:
            image_encoder = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=16,
                    projection_dim=16,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=32,
                    intermediate_size=16,
                    patch_size=8,
                )
            )
            pipe = WanImageToVideoPipeline(
                **common,
                vae=vae,
                transformer=_transformer(
                    36, 16, image_dim=16, pos_embed_seq_len=2 * _CLIP_TOKENS if kind == "flf2v" else None
                ),
                image_encoder=image_encoder,
                image_processor=CLIPImageProcessor(crop_size=32, size=32),
            )
    pipe.save_pretrained(path)
    return path


def build_tiny_lora(checkpoint: Path, dest: Path, *, rank: int = 4) -> Path:
    """Write a random (non-zero) LoRA for ``checkpoint``'s transformer in diffusers' LoRA format."""
    transformer = WanTransformer3DModel.from_pretrained(checkpoint, subfolder="transformer")
    torch.manual_seed(1)
    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    WanPipeline.save_lora_weights(dest, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return dest / "pytorch_lora_weights.safetensors"
