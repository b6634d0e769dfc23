"""tf.data input pipelines: the built-in shapes, TFDS data sets, image folders, and a data set by name."""

from tfdiffusion.data.builtin import load_shapes
from tfdiffusion.data.by_name import dataset_kind
from tfdiffusion.data.by_name import load_dataset
from tfdiffusion.data.folder import IMAGE_EXTENSIONS
from tfdiffusion.data.folder import load_image_folder
from tfdiffusion.data.pipeline import ImageDataset
from tfdiffusion.data.tfds_loader import load_tfds

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "dataset_kind",
    "load_dataset",
    "load_image_folder",
    "load_shapes",
    "load_tfds",
]
