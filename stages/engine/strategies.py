"""Model surgery for fine-tuning strategies: parameter groups, learning rates, freezing.

Every strategy compiles to two things: optimizer parameter groups, each with an explicit
``lr`` computed here (never a silent ``lr_scale`` that only timm's schedulers read), and a
per-epoch set of trainable layers. Layers come from the model's own grouping
(timm's ``group_matcher``, or torchvision's top-level children).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from stages.core.params import TrainSection
from stages.models.backbones import head_parameter_names, layer_ids


@dataclass(frozen=True)
class GroupInfo:
    """What the group table in the training log shows for one optimizer group."""

    name: str
    lr: float
    weight_decay: float
    params: int  # number of scalar parameters


def param_groups(model: nn.Module, cfg: TrainSection) -> list[dict]:
    """Optimizer groups: head at ``lr``; body at ``lr * backbone_lr_mult * layer_decay**depth``.

    Depth counts fine-grained layers down from the top of the body (0 for the layer just
    under the head). Norm weights and biases get no weight decay. Frozen parameters are
    included too, so gradual unfreezing only has to flip ``requires_grad``; timm's own
    ``param_groups_layer_decay`` drops them, which is why the groups are built here from
    timm's layer map.
    """
    layers = layer_ids(model, coarse=False)
    head = head_parameter_names(model)
    body_layers = sorted({layers[n] for n, _ in model.named_parameters() if n not in head})
    top_body = body_layers[-1] if body_layers else 0
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[tuple[str, int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        is_head = name in head
        layer = layers.get(name, top_body)
        if is_head:
            lr = cfg.lr
        else:
            decay = effective_layer_decay(cfg)
            lr = cfg.lr * cfg.backbone_lr_mult * decay ** (top_body - layer)
        no_decay = parameter.ndim <= 1 or name in no_decay_names
        key = ("head" if is_head else "body", layer, no_decay)
        group = groups.setdefault(
            key,
            {
                "name": f"{key[0]}_layer{layer}_{'no_decay' if no_decay else 'decay'}",
                "params": [],
                "param_names": [],
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            },
        )
        group["params"].append(parameter)
        group["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] == "head", k[1], k[2]))]


DISCRIMINATIVE_DEFAULT_DECAY = 0.7


def effective_layer_decay(cfg: TrainSection) -> float:
    """``train.layer_decay`` when set; 0.7 for the ``discriminative`` strategy; else none (1.0)."""
    if cfg.layer_decay is not None:
        return cfg.layer_decay
    return DISCRIMINATIVE_DEFAULT_DECAY if cfg.strategy == "discriminative" else 1.0


def group_table(groups: list[dict]) -> list[GroupInfo]:
    return [
        GroupInfo(g["name"], g["initial_lr"], g["weight_decay"], sum(p.numel() for p in g["params"]))
        for g in groups
    ]


def body_block_count(model: nn.Module) -> int:
    """Number of coarse body blocks (stem, stages...) that can be frozen one by one."""
    head = head_parameter_names(model)
    coarse = layer_ids(model, coarse=True)
    return len({coarse[n] for n, _ in model.named_parameters() if n not in head})


def trainable_blocks(cfg: TrainSection, epoch: int, num_blocks: int) -> int:
    """How many body blocks, counted from the top, train in ``epoch`` (0-based)."""
    if cfg.strategy in ("full", "discriminative", "lp_ft"):
        return num_blocks
    if cfg.strategy == "partial":
        return min(cfg.unfreeze_blocks, num_blocks)
    if cfg.strategy == "gradual":
        return min(epoch // cfg.unfreeze_every, num_blocks)
    return 0  # linear_probe


def apply_freeze(model: nn.Module, unfrozen_top_blocks: int) -> set[str]:
    """Set ``requires_grad`` so only the head and the top ``unfrozen_top_blocks`` body blocks train.

    Returns the names of the frozen modules, whose BatchNorm layers ``set_train_mode`` keeps in
    eval mode (frozen statistics stay frozen).
    """
    head = head_parameter_names(model)
    coarse = layer_ids(model, coarse=True)
    body_blocks = sorted({coarse[n] for n, _ in model.named_parameters() if n not in head})
    trainable = set(body_blocks[len(body_blocks) - unfrozen_top_blocks :]) if unfrozen_top_blocks else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in head or coarse.get(name) in trainable
    module_layers = layer_ids(model, coarse=True, modules=True)
    head_prefixes = {n.rsplit(".", 1)[0] for n in head}
    return {
        name
        for name, layer in module_layers.items()
        if layer not in trainable and name not in head_prefixes and layer in body_blocks
    }


def set_train_mode(model: nn.Module, frozen_modules: set[str]) -> None:
    """``model.train()``, except BatchNorm inside frozen blocks, whose running stats must not move."""
    model.train()
    for name, module in model.named_modules():
        if name in frozen_modules and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
