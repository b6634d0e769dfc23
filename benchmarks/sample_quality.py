"""Do class-conditional samples show their class? A classifier trained on the built-in shapes judges.

    python benchmarks/sample_quality.py --model runs/shapes/model.keras

Trains a small CNN on the shapes training split (the same generator and
resolution as the model), reports its accuracy on the held-out split, then
generates `--per-class` samples of every class with the model and reports the
fraction the classifier labels with the requested class. Prints JSON.
"""

import argparse
import json
import platform
import time

import keras
import numpy as np

import tfdiffusion as tfdiff
from tfdiffusion import presets
from tfdiffusion import shapes


def train_classifier(image_size, num_train=20000, epochs=3, seed=0):
    """A small CNN on shapes; returns (classifier, held-out accuracy)."""
    x_train, y_train = shapes.make_shapes(num_train, image_size, seed=seed)
    x_test, y_test = shapes.make_shapes(2000, image_size, seed=seed + 1)
    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential([
        keras.Input((image_size, image_size, 3)),
        keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(len(shapes.CLASS_NAMES)),
    ])
    classifier.compile(optimizer=keras.optimizers.Adam(2e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    classifier.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=0)
    accuracy = classifier.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    return classifier, float(accuracy)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .keras DiffusionModel trained on shapes")
    parser.add_argument("--per-class", type=int, default=32, help="samples per class (default: 32)")
    grid = presets.get_preset("shapes")  # default: what `tfdiffusion train` draws samples.png with
    parser.add_argument("--sampler", default=grid.sampler, help=f"ddim or ddpm (default: {grid.sampler})")
    parser.add_argument("--steps", type=int, default=grid.sample_steps,
                        help=f"sampling steps (default: {grid.sample_steps})")
    parser.add_argument("--guidance-scale", type=float, default=grid.guidance_scale,
                        help=f"guidance scale (default: {grid.guidance_scale:g})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    args = parser.parse_args(argv)

    model = keras.models.load_model(args.model)
    if model.num_classes != len(shapes.CLASS_NAMES):
        parser.error(f"the model must be conditional on the {len(shapes.CLASS_NAMES)} shapes classes; "
                     f"it has num_classes={model.num_classes}")
    image_size = model.image_shape[0]
    start = time.time()
    classifier, held_out_accuracy = train_classifier(image_size)
    classifier_seconds = time.time() - start

    labels = np.repeat(np.arange(model.num_classes), args.per_class).astype(np.int32)
    start = time.time()
    samples = model.generate(len(labels), sampler=args.sampler, num_steps=args.steps, seed=args.seed,
                             labels=labels, guidance_scale=args.guidance_scale, batch_size=128)
    sample_seconds = time.time() - start
    predicted = np.argmax(classifier.predict(samples, verbose=0), axis=-1)
    per_class = {name: float(np.mean(predicted[labels == k] == k)) for k, name in enumerate(shapes.CLASS_NAMES)}
    print(json.dumps({
        "model": args.model,
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "classifier_held_out_accuracy": held_out_accuracy,
        "classifier_train_seconds": round(classifier_seconds, 1),
        "sampler": args.sampler, "steps": args.steps, "guidance_scale": args.guidance_scale,
        "num_samples": int(len(labels)), "sample_seconds": round(sample_seconds, 1),
        "conditional_accuracy": float(np.mean(predicted == labels)),
        "per_class_accuracy": per_class,
    }, indent=2))


if __name__ == "__main__":
    main()
