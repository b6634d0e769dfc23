"""Finding and reading a diffusers model folder: configs, safetensors weights, hub ids."""

import json
import os
import re
from typing import Any, Dict, Iterable, Optional

import numpy as np

__all__ = ["DiffusersFiles", "check_config_keys", "check_finite_tensor", "locate", "read_json", "read_weights"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DiffusersFiles:
    """Paths of one diffusers UNet and its scheduler.

    Attributes:
        unet_config: path of the UNet's `config.json`.
        weights: path of its `diffusion_pytorch_model.safetensors`.
        scheduler_config: path of `scheduler_config.json`.
    """

    def __init__(self, unet_config: str, weights: str, scheduler_config: str):
        self.unet_config = unet_config
        self.weights = weights
        self.scheduler_config = scheduler_config


def _download(repo_id: str) -> str:
    try:
        import huggingface_hub
    except ImportError as error:
        raise FileNotFoundError(
            f"{repo_id!r} is not a folder. To read it as a Hugging Face hub id, install "
            "huggingface_hub (pip install huggingface_hub) and be online; or pass the "
            "folder of a downloaded diffusers model.") from error
    return huggingface_hub.snapshot_download(
        repo_id, allow_patterns=["*.json", "*.safetensors"])


def locate(path: str) -> DiffusersFiles:
    """Finds the UNet config, weights and scheduler config under `path`.

    A pipeline folder (`unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
    `scheduler/scheduler_config.json`) or the same three files at the top
    level. A `path` that is not a folder but looks like `owner/name` is
    downloaded from the Hugging Face hub (its own cache) when
    `huggingface_hub` is installed.

    Raises:
        FileNotFoundError: naming the file that is missing.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        if os.path.exists(path) or not _HUB_ID.match(path):
            raise FileNotFoundError(
                f"Expected a diffusers model folder (or a hub id such as "
                f"'google/ddpm-cifar10-32'). Received: {path!r}")
        path = _download(path)
    unet_dir = os.path.join(path, "unet")
    if not os.path.isfile(os.path.join(unet_dir, "config.json")):
        unet_dir = path
    scheduler_dir = os.path.join(path, "scheduler")
    if not os.path.isfile(os.path.join(scheduler_dir, "scheduler_config.json")):
        scheduler_dir = path
    files = DiffusersFiles(os.path.join(unet_dir, "config.json"),
                           os.path.join(unet_dir, WEIGHTS_NAME),
                           os.path.join(scheduler_dir, "scheduler_config.json"))
    for what, file in (("UNet config", files.unet_config), ("scheduler config", files.scheduler_config)):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"No {what} in {path!r}: expected {file!r}")
    if not os.path.isfile(files.weights):
        pickled = os.path.join(unet_dir, "diffusion_pytorch_model.bin")
        hint = (f" Found {pickled!r}, a PyTorch pickle that needs torch to read: save the model "
                "again with save_pretrained(..., safe_serialization=True)."
                if os.path.isfile(pickled) else "")
        raise FileNotFoundError(f"No weights file in {path!r}: expected {files.weights!r}.{hint}")
    return files


def read_json(path: str) -> Dict[str, Any]:
    """Reads a JSON object, raising a ValueError naming the file if it is not one."""
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path!r} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path!r} must hold a JSON object. Received a {type(config).__name__}")
    return config


def check_finite_tensor(key: str, value: np.ndarray, where: str = "") -> None:
    """Refuses a tensor holding NaN or infinite values, naming its key and how many.

    Args:
        key: the tensor's key in the weights file, e.g. "conv_in.bias".
        value: its float values.
        where: e.g. " in 'PATH'", appended to the key in the message.

    Raises:
        ValueError: "Weight 'conv_in.bias' holds 1 NaN or infinite value(s) of 128 ...".
    """
    finite = np.isfinite(value)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise ValueError(f"Weight {key!r}{where} holds {bad} NaN or infinite value(s) of {finite.size}: the "
                         "checkpoint is damaged (or was saved from a diverged run); a model converted from it "
                         "would sample black images.")


def read_weights(path: str) -> Dict[str, np.ndarray]:
    """Reads a safetensors file as float32 numpy arrays (no torch needed).

    Raises:
        ValueError: the file is not safetensors, or a tensor is not floating
            point or holds NaN or infinite values (also after the conversion
            to float32: a float64 value beyond 3.4e38), naming its key.
    """
    from safetensors.numpy import load_file
    try:
        tensors = load_file(path)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"Cannot read {path!r} as safetensors with numpy: {error}") from error
    out = {}
    for key, value in tensors.items():
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"Weight {key!r} in {path!r} must be floating point. "
                             f"Received dtype {value.dtype}")
        check_finite_tensor(key, value, f" in {path!r}")
        with np.errstate(over="ignore"):
            out[key] = value.astype(np.float32)
        check_finite_tensor(key, out[key], f" in {path!r} (as float32: {value.dtype} values beyond its range)")
    return out


def check_config_keys(config: Dict[str, Any], handled: Iterable[str], defaults: Dict[str, Any],
                      where: str, inert: Optional[Iterable[str]] = ()) -> None:
    """Raises for a key the converter does not understand.

    Keys starting with "_" (diffusers' bookkeeping) and `inert` keys are
    accepted; `handled` keys are mapped by the caller; a key in `defaults`
    is accepted only with its default value (absent counts as default).

    Raises:
        ValueError: naming the key, what is supported and what came.
    """
    handled, inert = set(handled), set(inert)
    for key, value in config.items():
        if key.startswith("_") or key in handled or key in inert:
            continue
        if key not in defaults:
            raise ValueError(f"{where}: unknown config key {key!r} (value {value!r}); the "
                             "converter maps only the keys it understands.")
        if value != defaults[key]:
            raise ValueError(f"{where}: {key}={value!r} is not supported; only "
                             f"{key}={defaults[key]!r} converts.")
