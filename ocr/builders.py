"""What a config describes, built: datasets and loaders, normalizer, post-processing, optimizer,
LR schedule, device and process group. ``ocr.pipeline`` runs them.

Each builder takes a checked config (``ocr.config.check_config``): complete, every key there,
so a key is read as ``config["trainer"]["seed"]`` and no default is repeated here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import ConfigError
from .data.dataset import OCRDataset
from .data.loader import build_dataset, build_loader
from .data.normalize import DeviceNormalizer
from .distributed import DistInfo, ShardSampler, dist_info_from_env, init_process_group
from .engine import poly_schedule, resolve_device
from .postprocess import DBPostProcess


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"the config has no '{name}' section (a mapping); see configs/dbnet.yaml")
    return value


def dataset_cfg(config: dict[str, Any], split: str) -> dict[str, Any]:
    datasets = section(config, "datasets")
    if split not in datasets:
        raise ConfigError(f"the config has no datasets.{split}; it has {sorted(datasets)}")
    return datasets[split]


def build_eval_loader(
    config: dict[str, Any], split: str, info: DistInfo
) -> tuple[OCRDataset, DataLoader]:
    dataset = build_dataset(dataset_cfg(config, split), name=split)
    sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    loader_cfg = section(config, "dataloader")
    return dataset, build_loader(dataset, loader_cfg, shuffle=False, sampler=sampler)


def build_normalizer(config: dict[str, Any], device: torch.device) -> DeviceNormalizer:
    norm = config["normalization"]
    return DeviceNormalizer(device, mean=norm["mean"], std=norm["std"])


def build_postprocess(config: dict[str, Any]) -> DBPostProcess:
    cfg = dict(config["postprocess"])
    if cfg["shrink_ratio"] is None:
        # The inverse unclip undoes the targets' shrink, so it takes their ratio unless told.
        cfg["shrink_ratio"] = config["targets"]["shrink_ratio"]
    return DBPostProcess(**cfg)


def build_optimizer(config: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    cfg = section(config, "optimizer")
    name, lr, decay = cfg["name"], float(cfg["lr"]), float(cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if name == "sgd":
        momentum = float(cfg["momentum"])
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    raise ConfigError(f"optimizer.name {name!r} is not known; use adam or sgd")


def build_scheduler(
    config: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int
) -> Any:
    cfg = config["scheduler"]
    name = cfg["name"]
    if name == "constant":
        return None
    if name == "poly":
        factor = poly_schedule(total_steps, float(cfg["power"]), cfg["warmup_steps"])
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ConfigError(f"scheduler.name {name!r} is not known; use poly or constant")


def setup_device(config: dict[str, Any], info: DistInfo) -> torch.device:
    """Set torch's CPU threads (``trainer.threads``) and pick this process's device."""
    trainer = section(config, "trainer")
    if trainer["threads"]:
        torch.set_num_threads(trainer["threads"])
    return resolve_device(trainer["device"], info)


def setup_run(config: dict[str, Any]) -> tuple[DistInfo, torch.device, dict[str, Any]]:
    info = dist_info_from_env()
    device = setup_device(config, info)
    init_process_group(info, device)
    return info, device, section(config, "trainer")
