"""Fine-tune a copy of a causal LM on the members, as one Ray task (a GPU when the cluster has
one): LoRA through peft (the adapter is saved as safetensors; scans merge it into the base) or
full fine-tuning. Checkpointed every `checkpoint_every` steps with the optimizer and RNG state,
so a killed run continues where its last checkpoint left off and ends where an uninterrupted run
would. Texts are tokenized as the scan tokenizes them (scanner.scoring.interface.TextTokenizer).

  <dir>/spec.json     the settings: a folder refuses a fine-tune with other settings
  <dir>/checkpoint/   weights (adapter or full model), the optimizer's and RNG's state
                      (optimizer.safetensors + optimizer.json: no pickle), state.json (step, losses)
  <dir>/model/        the result: adapter or full checkpoint with its tokenizer
  <dir>/log.json      the spec, the loss per step, tokens/s, where it resumed; written last

<dir> is a local path or a URI (scanner.storage). At a URI the task trains in a local working
folder and copies each checkpoint there (state.json last: a checkpoint without it is not one),
then the model, then log.json; a task restarted on another node takes the checkpoint from there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scanner.errors import InputError
from scanner.faults import maybe_fail
from scanner.storage import Store, absolute, cache_folder

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 5e-4, "full": 5e-5}


@dataclass
class FinetuneSpec:
    model: str
    method: str = "lora"
    epochs: int = 1
    lr: float | None = None  # default by method (DEFAULT_LR)
    batch_size: int = 8
    max_length: int = 512  # tokens of a text that are trained on (the scan scores its whole window)
    lora_r: int = 16
    lora_alpha: int = 32
    seed: int = 0
    checkpoint_every: int = 25  # steps
    revision: str | None = None
    trust_remote_code: bool = False

    def validate(self) -> "FinetuneSpec":
        if self.method not in METHODS:
            raise InputError(f"--method {self.method!r} is not one of {METHODS}")
        for name in ("epochs", "batch_size", "max_length", "lora_r", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if not self.lr > 0:
            raise InputError(f"--lr {self.lr} must be positive")
        return self


def _atomic_dir(target: Path, write) -> None:
    """write(tmp) then swap it in: a kill leaves either the old folder or the new one."""
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _existing(target: Path) -> Path | None:
    old = target.with_name(target.name + ".old")
    return target if target.exists() else (old if old.exists() else None)  # killed between the renames


def _save_optimizer(optimizer, folder: Path) -> None:
    """The optimizer's state and the torch RNG as safetensors, its settings as JSON."""
    import torch
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {f"{i}.{name}": t.contiguous() for i, st in sd["state"].items() for name, t in st.items()}
    save_file(tensors | {"rng": torch.get_rng_state()}, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(sd["param_groups"]))


def _load_optimizer(optimizer, folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state: dict = {}
    for key, t in load_file(str(folder / "optimizer.safetensors")).items():
        if key == "rng":
            torch.set_rng_state(t)
        else:
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": json.loads((folder / "optimizer.json").read_text())})


class Finetune:
    """Everything one fine-tune needs, built where it runs (the Ray task)."""

    def __init__(self, spec: FinetuneSpec, store: Store, log=print):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from scanner.scoring.factory import local_model
        from scanner.scoring.hf import auto_device, auto_dtype
        from scanner.scoring.interface import TextTokenizer

        self.spec, self.store, self.log = spec, store, log
        # where it trains: the folder itself, or a local one beside a folder at a URI
        self.folder = Path(store.root) if store.local else cache_folder("finetune", store.uri)
        self.device = auto_device()
        if self.device == "cpu":  # Ray gives a 1-CPU task one thread; the fine-tune is the node's only work
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        if not store.local:  # the store's checkpoint, never one an earlier task left in this node's folder
            for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
                shutil.rmtree(self.folder / name, ignore_errors=True)
            if store.exists("checkpoint/state.json"):
                store.download("checkpoint", str(self.folder / "checkpoint"))
        ckpt = _existing(self.folder / "checkpoint")
        torch.manual_seed(spec.seed)  # the LoRA initialisation, then the RNG state of a checkpoint
        common = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        base = local_model(spec.model)
        self.tokenizer = AutoTokenizer.from_pretrained(base, **common)
        # LoRA: a frozen base in the scan's dtype; full: fp32 weights, so small updates are not rounded away
        dtype = auto_dtype(self.device) if spec.method == "lora" else torch.float32
        if spec.method == "full" and ckpt is not None:
            model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **common)
        if spec.method == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model

            if ckpt is not None:
                model = PeftModel.from_pretrained(model, ckpt, is_trainable=True)
            else:
                model = get_peft_model(model, LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=0.0,
                                                         target_modules="all-linear", task_type="CAUSAL_LM"))
        self.model = model.to(self.device)
        window = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.tokenize = TextTokenizer(self.tokenizer, min(x for x in (spec.max_length, window) if x))
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr,
                                           weight_decay=0.0)
        self.state = {"step": 0, "losses": [], "tokens": 0, "seconds": 0.0, "resumed_from": None}
        if ckpt is not None:
            _load_optimizer(self.optimizer, ckpt)
            self.state = json.loads((ckpt / "state.json").read_text())
            self.state["resumed_from"] = self.state["step"]
            log(f"fine-tune: continuing from the checkpoint at step {self.state['step']}")

    def _batch(self, rows: list[list[int]]):
        from scanner.scoring.hf import right_padded

        ids, mask = right_padded(rows, self.tokenize.pad_id)
        labels = ids.masked_fill(mask == 0, -100)  # no loss on padding
        return ids.to(self.device), mask.to(self.device), labels.to(self.device)

    def _save(self, target: Path, with_optimizer: bool) -> None:

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            if with_optimizer:
                _save_optimizer(self.optimizer, tmp)
                (tmp / "state.json").write_text(json.dumps(self.state))
            else:
                self.tokenizer.save_pretrained(tmp)

        _atomic_dir(target, write)

    def run(self, texts: list[str], stream: list[int]) -> dict:
        ids, _ = self.tokenize(texts)
        size = self.spec.batch_size
        batches = [stream[i:i + size] for i in range(0, len(stream), size)]
        self.model.train()
        t0 = time.perf_counter() - self.state["seconds"]
        for step in range(self.state["step"], len(batches)):
            x, mask, labels = self._batch([ids[i] for i in batches[step]])
            loss = self.model(input_ids=x, attention_mask=mask, labels=labels).loss
            value = float(loss.detach())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.state["step"] = step + 1
            self.state["losses"].append(round(value, 5))
            self.state["tokens"] += int(mask.sum())
            self.state["seconds"] = time.perf_counter() - t0
            self.log(f"fine-tune step {step + 1}/{len(batches)}: loss {value:.3f}, "
                     f"{self.state['tokens'] / self.state['seconds']:,.0f} tokens/s")
            if (step + 1) % self.spec.checkpoint_every == 0 and step + 1 < len(batches):
                self._save(self.folder / "checkpoint", with_optimizer=True)
                self._publish_checkpoint()
                maybe_fail("finetune_checkpoint")
        self._save(self.folder / "model", with_optimizer=False)
        if not self.store.local:
            self.store.upload(str(self.folder / "model"), "model")
        result = {"spec": asdict(self.spec), "steps": len(batches), "losses": self.state["losses"],
                  "tokens": self.state["tokens"], "seconds": round(self.state["seconds"], 1),
                  "tokens_per_second": self.state["tokens"] / max(self.state["seconds"], 1e-9),
                  "resumed_from": self.state["resumed_from"], "device": self.device}
        self.store.write_json("log.json", result)
        shutil.rmtree(self.folder / "checkpoint", ignore_errors=True)
        if not self.store.local:
            self.store.delete_folder("checkpoint")
        return result

    def _publish_checkpoint(self) -> None:
        """A folder at a URI gets the checkpoint file by file, its state.json removed first and
        written last: a kill in between leaves no checkpoint, never a mixed one."""
        if self.store.local:
            return
        self.store.delete("checkpoint/state.json")
        local = self.folder / "checkpoint"
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == "state.json")
        for p in files:
            self.store.write_bytes(f"checkpoint/{p.relative_to(local).as_posix()}", p.read_bytes())


def finetune(spec: dict, texts: list[str], stream: list[int], folder: str) -> dict:
    """The task body: resumes a checkpoint of the same spec, refuses one of another."""
    store = Store(folder)
    if store.exists("log.json"):
        done = store.read_json("log.json")
        if done["spec"] != spec:
            raise InputError(f"{folder}: fine-tuned with other settings ({done['spec']}); use a new --out")
        return done | {"skipped": True}
    if store.exists("spec.json") and store.read_json("spec.json") != spec:
        raise InputError(f"{folder}: a fine-tune with other settings was started here; use a new --out")
    store.write_json("spec.json", spec)
    return Finetune(FinetuneSpec(**spec), store, log=lambda m: print(m, flush=True)).run(texts, stream)


def finetune_on_ray(spec: FinetuneSpec, texts: list[str], stream: list[int], folder: str) -> dict:
    import ray

    from scanner.engine import release_parked

    release_parked()  # scoring actors an earlier run left loaded would hold the accelerator it needs
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(finetune)
    try:
        return ray.get(task.remote(asdict(spec), texts, stream, absolute(folder)))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, InputError):
            raise InputError(str(e.cause)) from None
        raise
