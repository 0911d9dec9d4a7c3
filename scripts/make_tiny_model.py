# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vLLM project
"""Write a tiny random-weight model and a local tokenizer (no hub access).

Deterministic from --seed: the same seed gives byte-identical weights. Byte-level
tokenizer (any text encodes), GQA (4 query heads, 2 KV heads), two layers:

* ``--arch llama`` (the default): head size 32.
* ``--arch gemma4``: Gemma 4's layout, a sliding-window layer (window 8, head
  size 64) then a full-attention layer of head size 512, with q/k norms.

    python3 scripts/make_tiny_model.py --out models/tiny-llama
"""

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<unk>", "<s>", "</s>"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(SPECIAL + alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="models/tiny-llama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=("llama", "gemma4"), default="llama")
    args = parser.parse_args()

    tokenizer = byte_level_tokenizer()
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
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main()
