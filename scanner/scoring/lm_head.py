"""A causal LM's output head, loaded alone from its safetensors checkpoint, for backends that get
the final hidden states from elsewhere (vLLM's pooling runner): logits = head(hidden), with the
logit scaling some architectures apply inside their forward, so that log-probs equal the full
model's. Only the head's tensors are read (the rest of a 70B checkpoint never is)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from scanner.errors import InputError

# config attributes that change the logits after the head, and how (transformers' own forwards)
SOFTCAP, SCALE, DIVIDE = "final_logit_softcapping", "logit_scale", "logits_scaling"
# attributes of architectures whose head input or output is rescaled in ways not reproduced here
UNSUPPORTED = ("lm_head_multiplier", "dim_model_base", "output_multiplier_scale", "mup_width_scale")


class LMHead(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None, scale: float):
        super().__init__()
        self.out_features = weight.shape[0]
        self.weight, self.bias = torch.nn.Parameter(weight, False), None if bias is None else torch.nn.Parameter(bias, False)
        self.softcap, self.scale = softcap, scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(torch.nn.functional.linear(hidden, self.weight, self.bias))

    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model does to the linear map's output (elementwise: it may run on a slice of
        the vocabulary, scanner.scoring.vocab_stats)."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_transform(config) -> tuple[float | None, float]:
    """(soft-cap, scale) of the logits after the head, from the model's config."""
    bad = [k for k in UNSUPPORTED if getattr(config, k, None) not in (None, 1, 1.0)]
    if bad:
        raise InputError(f"this model rescales its LM head ({', '.join(bad)}), which the vllm backend does not "
                         "reproduce: use backend hf")
    scale = float(getattr(config, SCALE, None) or 1.0) / float(getattr(config, DIVIDE, None) or 1.0)
    if not math.isfinite(scale) or scale == 0:
        raise InputError(f"the model's config scales its logits by {scale}")
    return getattr(config, SOFTCAP, None) or None, scale


def module_names(config, trust_remote_code: bool) -> tuple[str, str, str, bool]:
    """(output head's module name, input embedding's module name, base_model_prefix, whether
    the head has a bias), read off the architecture built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(head)], names[id(emb)], model.base_model_prefix, getattr(head, "bias", None) is not None


def checkpoint_files(model: str, revision: str | None) -> list[Path]:
    """The safetensors files of a local folder, or of a hub id (from the local cache, where the
    engine has just put them)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model, revision=revision, allow_patterns=["*.safetensors", "*.json"]))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{model}: no safetensors weights (the vllm backend reads the LM head from them; "
                         "pickled .bin checkpoints are not loaded)")
    return files


def read_tensor(files: list[Path], names: list[str]) -> torch.Tensor | None:
    """The first of `names` that a checkpoint file holds."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as st:
            keys = set(st.keys())
            for name in names:
                if name in keys:
                    return st.get_tensor(name)
    return None


def spellings(name: str, prefix: str) -> list[str]:
    """A parameter's name as checkpoints write it: with or without the base model's prefix."""
    bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
    return list(dict.fromkeys([name, bare, f"{prefix}.{bare}" if prefix else bare]))


def load_lm_head(model: str, revision: str | None, trust_remote_code: bool, device: str,
                 dtype: torch.dtype) -> LMHead:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    softcap, scale = logit_transform(config)
    head, emb, prefix, has_bias = module_names(config, trust_remote_code)
    files = checkpoint_files(model, revision)
    names = spellings(f"{head}.weight", prefix)
    if getattr(config.get_text_config(), "tie_word_embeddings", False):  # a tied head is stored once, as the embedding
        names += spellings(f"{emb}.weight", prefix)
    weight = read_tensor(files, names)
    if weight is None:
        raise InputError(f"{model}: its checkpoint has no {head}.weight")
    bias = read_tensor(files, spellings(f"{head}.bias", prefix)) if has_bias else None
    return LMHead(weight.to(device, dtype), None if bias is None else bias.to(device, dtype), softcap, scale).eval()
