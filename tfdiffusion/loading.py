"""Loading a saved `DiffusionModel`: a `.keras` file or a training run's folder, with errors that say what is wrong."""

import os
import zipfile

import keras

from tfdiffusion.model import DiffusionModel

__all__ = ["MODEL_FILE", "load_model"]

# The trained model in a training run's folder.
MODEL_FILE = "model.keras"


def resolve_model_path(path: str) -> str:
    """`path` itself, or the `model.keras` inside a run folder.

    Raises:
        FileNotFoundError: nothing there.
        TypeError: `path` is not a path.
        ValueError: a folder without a model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a .keras file or a run folder (str or os.PathLike). Received: path={path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, MODEL_FILE)
        if os.path.isfile(inside):
            return inside
        raise ValueError(f"{path!r} is a folder without {MODEL_FILE}; expected a .keras file written by "
                         f"`tfdiffusion train` (OUTPUT_DIR/{MODEL_FILE}) or a run folder")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r}: no such file; expected a .keras file written by `tfdiffusion "
                                f"train` (e.g. OUTPUT_DIR/{MODEL_FILE})")
    return path


def load_model(path: str, compile: bool = False) -> DiffusionModel:
    """Loads a `DiffusionModel` saved with `model.save("x.keras")` (or a run folder holding model.keras).

    Args:
        path: the `.keras` file, or a `tfdiffusion train` output folder.
        compile: also restore the optimizer and its state (to train on).

    Returns:
        The `DiffusionModel`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a Keras archive (truncated, another
            format), cannot be loaded, or holds another kind of model.
    """
    path = resolve_model_path(path)
    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        raise ValueError(f"{path!r} ({size} bytes) is not a .keras model archive (a zip file written by "
                         "model.save): it is truncated or of another format")
    try:
        model = keras.models.load_model(path, compile=compile)
    except Exception as error:  # Keras raises many kinds for a damaged or foreign archive.
        message = " ".join(str(error).split())
        raise ValueError(f"{path!r} could not be loaded as a Keras model: {type(error).__name__}: "
                         f"{message}") from None
    if not isinstance(model, DiffusionModel):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not a tfdiffusion DiffusionModel")
    return model
