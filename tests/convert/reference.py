"""The committed diffusers fixture (made by make_diffusers_fixtures.py), read without torch."""

import json
import shutil
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
ARRAYS = dict(np.load(FIXTURES / "reference.npz"))
INFO = json.loads((FIXTURES / "reference.json").read_text())
UNETS = sorted(INFO["unets"])
TIMESTEPS = np.array(INFO["timesteps"], np.int32)
LABELS = np.array(INFO["labels"], np.int32)


def unet_dir(name):
    """Folder of a fixture UNet: config.json and diffusion_pytorch_model.safetensors."""
    return FIXTURES / name / "unet"


def scheduler_config_path(kind, name):
    """`kind`: "schedules", "ddpm_steps" or "ddim_chains"."""
    return FIXTURES / kind / name / "scheduler_config.json"


def make_pipeline(tmp_path, unet_name, schedule=("schedules", "linear"), top_level=False):
    """A diffusers pipeline folder (unet/ and scheduler/, or both at the top level)."""
    root = tmp_path / f"{unet_name}_pipeline"
    unet = root if top_level else root / "unet"
    scheduler = root if top_level else root / "scheduler"
    shutil.copytree(unet_dir(unet_name), unet, dirs_exist_ok=True)
    scheduler.mkdir(parents=True, exist_ok=True)
    shutil.copy(scheduler_config_path(*schedule), scheduler / "scheduler_config.json")
    return root


def labels_for(unet):
    return LABELS if unet.num_classes is not None else None
