# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Write a tiny random-weight model and a local tokenizer (no hub access).

Deterministic from --seed: the same seed gives byte-identical weights. Byte-level
tokenizer (any text encodes), GQA (4 query heads, 2 KV heads), two layers:

* ``--arch llama`` (the default): head size 32.
* ``--arch gemma4``: Gemma 4's layout, a sliding-window layer (window 8, head
  size 64) then a full-attention layer of head size 512, with q/k norms.
* ``--arch gemma3-vision``: Gemma 3 with a one-layer SigLIP tower and its
  processor: a multimodal prefix-LM, whose 16 image tokens per 56x56 image
  attend to each other both ways (head size 32, window 24).

    python3 scripts/make_tiny_model.py --out models/tiny-llama
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

SPECIAL = ["<unk>", "<s>", "</s>"]
# Gemma 3's image markers; vLLM's Gemma 3 processing also looks up "\n" to "\n\n\n\n"
IMAGE_TOKENS = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>")
IMAGE_TOKENS.update(image_token="<image_soft_token>")
IMAGE_SIZE, IMAGE_TOKENS_PER_IMAGE = 56, 16


def byte_level_tokenizer(image_tokens: bool = False) -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(SPECIAL + alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    extra = dict(extra_special_tokens=IMAGE_TOKENS, pad_token="<unk>") if image_tokens else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", **extra
    )
    if image_tokens:
        tokenizer.add_tokens([AddedToken("\n" * n, normalized=False) for n in (4, 3, 2, 1)])
    return tokenizer


def gemma3_vision(tokenizer, shape: dict) -> Gemma3ForConditionalGeneration:
    # vLLM drops the image ranges of a model whose window is shorter than an image
    text = Gemma3TextConfig(
        head_dim=32, sliding_window=24, layer_types=["sliding_attention", "full_attention"], **shape
    )
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=IMAGE_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )
    return Gemma3ForConditionalGeneration(config)


def save_gemma3_vision(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=IMAGE_TOKENS_PER_IMAGE,
    )
    processor.save_pretrained(out)
    # transformers 5.20 writes the SigLIP weights without the "vision_model."
    # level that published Gemma 3 checkpoints (and vLLM 0.34's loader) have.
    path = out / "model.safetensors"
    state = load_file(path)
    tower, level = "vision_tower.", "vision_tower.vision_model."

    def published_name(key: str) -> str:
        if key.startswith(tower) and not key.startswith(level):
            return level + key[len(tower) :]
        return key

    renamed = {published_name(key): value for key, value in state.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=("llama", "gemma4", "gemma3-vision"), default="llama")
    args = parser.parse_args()

    tokenizer = byte_level_tokenizer(image_tokens=args.arch == "gemma3-vision")
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(args.seed)
    if args.arch == "llama":
        model, weight_std = LlamaForCausalLM(LlamaConfig(head_dim=32, **shape)), 0.08
    elif args.arch == "gemma3-vision":
        model, weight_std = gemma3_vision(tokenizer, dict(shape, pad_token_id=0)), 0.4
    else:
        config = Gemma4TextConfig(
            head_dim=64,
            global_head_dim=512,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            hidden_size_per_layer_input=0,
            vocab_size_per_layer_input=len(tokenizer),
            pad_token_id=0,
            **shape,
        )
        # its q/k/v norms keep scores small: larger weights for logits far from ties
        model, weight_std = Gemma4ForCausalLM(config), 0.4
    with torch.no_grad():  # larger weights than the init default: logits far from ties
        for param in model.parameters():
            param.normal_(0.0, weight_std)
    out = Path(args.out)
    if args.arch == "gemma3-vision":
        save_gemma3_vision(model, tokenizer, out)
    else:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main()
