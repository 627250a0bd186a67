"""Image-text samples that need no download: scikit-learn's handwritten digits (1,797 images of
8x8 grey levels), enlarged and coloured, each with a caption. Used by the tests and the demo."""

from __future__ import annotations

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STROKES = ("thin", "bold", "slanted", "upright", "wide", "narrow", "careful", "hasty", "round", "sharp")
PLACES = ("on a form", "in a notebook", "on an envelope", "on a cheque", "on a ticket", "in a margin")


def digit_images(size: int = 32, colormap: str = "viridis"):
    """(PIL RGB images, digit of each): every digit enlarged to size x size and coloured."""
    from matplotlib import colormaps
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    cmap = colormaps[colormap]
    images = []
    for grey in digits.images / 16.0:
        rgb = (cmap(grey)[:, :, :3] * 255).astype(np.uint8)
        images.append(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return images, digits.target.astype(int)


def captions(digits: np.ndarray, seed: int = 0) -> list[str]:
    """A caption per image: its digit in words and a seeded choice of stroke, place and writer,
    so captions are mostly distinct (a model can memorise a pair, not only a digit)."""
    rng = np.random.default_rng(seed)
    return [f"a {STROKES[rng.integers(len(STROKES))]} handwritten {DIGITS[d]} written {PLACES[rng.integers(len(PLACES))]} "
            f"by writer {rng.integers(1000)}" for d in digits]


def tiny_llava(captions_: list[str], out_dir, image_size: int = 32, seed: int = 0):
    """An untrained LLaVA (a 2-layer CLIP vision tower on 8x8 patches, a 2-layer Llama) with a
    BPE tokenizer trained on the captions and its processor, saved to out_dir as a standard
    checkpoint (AutoProcessor / AutoModelForImageTextToText load it). Returns (model, processor)."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from scanner.toy import bpe_tokenizer

    torch.manual_seed(seed)
    tok = bpe_tokenizer(captions_, 512)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.pad_token = tok.eos_token
    patch = 8
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=(image_size // patch) ** 2)
    model = LlavaForConditionalGeneration(config)
    images = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model, processor


def train_tiny_llava(images: list, texts: list[str], out_dir, all_texts: list[str], target_loss: float = 1.0,
                     max_epochs: int = 80, seed: int = 0, log=print) -> dict:
    """tiny_llava trained on the (PIL image, text) pairs, the loss on the text tokens only, until
    an epoch's mean loss reaches target_loss (how far memorisation went decides the AUC, not an
    epoch count); saved to out_dir."""
    from scanner.toy import train_to_loss

    model, processor = tiny_llava(all_texts, out_dir, images[0].width, seed)
    image_id = model.config.image_token_index

    def loss_of(rows):
        enc = processor(images=[images[i] for i in rows], text=["<image>" + texts[i] for i in rows],
                        return_tensors="pt", padding=True)
        ids = enc["input_ids"]
        return model(**enc, labels=ids.masked_fill((ids == image_id) | (enc["attention_mask"] == 0), -100)).loss

    info = train_to_loss(model, len(texts), loss_of, target_loss, max_epochs, seed,
                         lambda e, x: log(f"tiny LLaVA epoch {e}: training loss {x:.3f}"))
    model.save_pretrained(out_dir)
    return info
