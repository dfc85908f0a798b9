"""LoRA adapters (``peft``) on the trainable layers of an encoder (``TrainConfig.lora_rank``).

With LoRA the pretrained weights stay as they are and each linear layer of the encoder layers above
``frozen_layers`` learns a low-rank update ``B @ A`` (rank r, scaled by ``alpha / r``) beside it; the part above
the encoder (final norm, pooler, classification head) trains in full. Why it is worth having for
``gemma-ko``: AdamW keeps state for a few million parameters instead of 140M, and a step's cost is what is
left, the forward and the backward pass through the activations (``bench/bench_gemma.py`` measures it).

A checkpoint is never an adapter folder: :func:`merged` folds the adapters into a copy of the weights, so a
LoRA-trained checkpoint is an ordinary ``save_pretrained`` folder that serves, evaluates and ensembles like
any other. What training needs to resume (the adapters and the head, :func:`trainable_state`) goes with the
optimizer state in ``training_state/``.
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch

from kosent.models import ModelError, layer_depth


def add_lora(model: torch.nn.Module, rank: int, alpha: float, frozen_layers: int = 0) -> torch.nn.Module:
    """``model`` with rank-``rank`` adapters on every linear layer of its encoder layers ``frozen_layers``
    and above; everything else frozen but the head (depth ``num_layers + 1``: final norm, pooler, classifier)."""
    num_layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0)
    if not num_layers:
        raise ModelError(f"lora_rank {rank}: {type(model).__name__} has no encoder layers; LoRA is for BERT "
                         "and Gemma encoders")
    if frozen_layers >= num_layers:
        raise ModelError(f"lora_rank {rank} with frozen_layers {frozen_layers}: {type(model).__name__} has "
                         f"{num_layers} encoder layers, none would get adapters")
    targets = sorted(
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and frozen_layers < layer_depth(f"{name}.weight", num_layers) <= num_layers
    )
    from peft import LoraConfig, get_peft_model  # imported by LoRA runs only (a second or two)

    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; nothing for a user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
    for name, param in wrapped.named_parameters():
        if "lora_" not in name and layer_depth(name, num_layers) == num_layers + 1:
            param.requires_grad_(True)
    return wrapped


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """What a checkpoint holds: ``model`` itself, or for a LoRA model a copy with the adapters folded into
    the weights (the training model keeps its adapters)."""
    peft = sys.modules.get("peft")  # not imported: no LoRA model can exist
    if peft is not None and isinstance(model, peft.PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA's adapters and the head), by name: what resuming a LoRA run restores
    on top of the pretrained weights."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put :func:`trainable_state` back into a model built the same way; a name that does not fit is an error
    (a checkpoint of another LoRA rank, layer range or model)."""
    expected = set(trainable_state(model))
    if set(state) != expected:
        raise ModelError(f"the saved LoRA state does not fit this model: {len(set(state) - expected)} unexpected and "
                         f"{len(expected - set(state))} missing tensors (another lora_rank, frozen_layers or model?)")
    model.load_state_dict(state, strict=False)


__all__ = ["add_lora", "load_trainable_state", "merged", "trainable_state"]
