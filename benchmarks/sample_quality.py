"""Do class-conditional samples show their class? The shapes network shipped with tfdiffusion judges.

    python benchmarks/sample_quality.py --model runs/shapes/model.keras
    python benchmarks/sample_quality.py --model saved_models/shapes     # an exported SavedModel

Reports the shipped shapes classifier's accuracy on the held-out split at the
model's resolution (`features.shapes_features("logits")`, trained by
benchmarks/train_shapes_features.py), then generates `--per-class` samples of
every class with the model and reports the fraction the classifier labels
with the requested class. Prints JSON.
"""

import argparse
import json
import platform
import time

import numpy as np

from tfdiffusion import features
from tfdiffusion import metrics
from tfdiffusion import presets
from tfdiffusion import shapes
from tfdiffusion.served_model import load_generator


def held_out_accuracy(classifier, image_size, num_images=2000):
    """The classifier's accuracy on the shapes test split (data seed 1) at `image_size`."""
    images, labels = shapes.make_shapes(num_images, image_size, seed=1)
    return metrics.class_accuracy(images, labels, classifier)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="a .keras DiffusionModel trained on shapes, or its exported SavedModel")
    parser.add_argument("--per-class", type=int, default=32, help="samples per class (default: 32)")
    grid = presets.get_preset("shapes")  # default: what `tfdiffusion train` draws samples.png with
    parser.add_argument("--sampler", default=grid.sampler, help=f"ddim or ddpm (default: {grid.sampler})")
    parser.add_argument("--steps", type=int, default=grid.sample_steps,
                        help=f"sampling steps (default: {grid.sample_steps})")
    parser.add_argument("--guidance-scale", type=float, default=grid.guidance_scale,
                        help=f"guidance scale (default: {grid.guidance_scale:g})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    args = parser.parse_args(argv)

    model = load_generator(args.model)
    if model.num_classes != len(shapes.CLASS_NAMES):
        parser.error(f"the model must be conditional on the {len(shapes.CLASS_NAMES)} shapes classes; "
                     f"it has num_classes={model.num_classes}")
    image_size = model.image_shape[0]
    classifier = features.shapes_features("logits")

    labels = np.repeat(np.arange(model.num_classes), args.per_class).astype(np.int32)
    start = time.time()
    samples = model.generate(len(labels), sampler=args.sampler, num_steps=args.steps, seed=args.seed,
                             labels=labels, guidance_scale=args.guidance_scale,
                             batch_size=min(128, getattr(model, "max_images", 128)))
    sample_seconds = time.time() - start
    predicted = np.argmax(classifier(samples).numpy(), axis=-1)
    per_class = {name: float(np.mean(predicted[labels == k] == k)) for k, name in enumerate(shapes.CLASS_NAMES)}
    print(json.dumps({
        "model": args.model,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "classifier": features.SHAPES_WEIGHTS_PATH,
        "classifier_held_out_accuracy": held_out_accuracy(classifier, image_size),
        "sampler": args.sampler, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "num_samples": int(len(labels)), "sample_seconds": round(sample_seconds, 1),
        "conditional_accuracy": float(np.mean(predicted == labels)),
        "per_class_accuracy": per_class,
    }, indent=2))


if __name__ == "__main__":
    main()
