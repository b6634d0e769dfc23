"""Trains the shapes feature network shipped in tfdiffusion/assets/ (the features of the "shapes FID").

    python benchmarks/train_shapes_features.py                    # writes the shipped weights
    python benchmarks/train_shapes_features.py --output /tmp/s.weights.h5 --seed 1

Trains `features.build_shapes_network()` on the shapes training split
(`make_shapes(..., seed=0)`, the split `load_shapes("train")` reads), each
batch rendered at one of 8, 16 or 32 pixels and resized to 16x16 the way
`features.shapes_features()` resizes its inputs, so one network serves every
resolution. Before saving, the features are scaled to a fixed mean square
(FEATURE_MEAN_SQUARE). Deterministic for a seed (op determinism on): two
runs write identical files. Then reports the held-out accuracy (test split,
seed 1) at several input resolutions and prints JSON (progress goes to
stderr). About 2 to 3 minutes on 2 CPU cores.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfdiffusion import features
from tfdiffusion import shapes

TRAIN_RESOLUTIONS = (8, 16, 32)
EVAL_RESOLUTIONS = (8, 12, 16, 24, 32, 64)
TRAIN_SEED, TEST_SEED = 0, 1  # the data seeds of load_shapes' "train" and "test" splits
# Mean square of a feature on the training split (16x16) after training. It
# puts x.y / D, the argument of KID's kernel (x.y / D + 1)^3, below 1, where
# the kernel's low-order terms carry most of the weight, the regime of
# Inception's pool features (mostly below 1). Unscaled (a mean square of about
# 25), KID told noisy from clean shapes less clearly: the noise-0.2 KID was 9x
# the spread of the clean halves' KID, 22x at this scale (unit scale: 16x).
FEATURE_MEAN_SQUARE = 0.25


def training_data(num_images, batch_size, seed, preprocess):
    """An endless dataset of `(images [B, 16, 16, 3] in [-1, 1], labels [B])`, random resolution per batch."""
    per_resolution = []
    for k, size in enumerate(TRAIN_RESOLUTIONS):
        images, labels = shapes.make_shapes(num_images, size, seed=TRAIN_SEED)
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.shuffle(num_images, seed=seed + k, reshuffle_each_iteration=True).repeat()
        per_resolution.append(ds.batch(batch_size, drop_remainder=True))
    def resolution(r):
        return r % len(TRAIN_RESOLUTIONS)

    def to_network_input(images, labels):
        return preprocess(images), labels

    choice = tf.data.Dataset.random(seed=seed).map(resolution)
    ds = tf.data.Dataset.choose_from_datasets(per_resolution, choice)
    return ds.map(to_network_input).prefetch(tf.data.AUTOTUNE)


def normalize_feature_scale(network, images, preprocess):
    """Scales the "features" layer so that their mean square per dimension on `images` is FEATURE_MEAN_SQUARE.

    ReLU is positively homogeneous: multiplying the features layer's kernel
    and bias by c > 0 multiplies the features by c, and dividing the logits
    kernel by c leaves the logits (and accuracy) unchanged.

    Returns:
        c, the factor applied.
    """
    probe = keras.Model(network.input, network.get_layer("features").output)
    values = probe.predict(preprocess(images), batch_size=512, verbose=0).astype(np.float64)
    scale = float(np.sqrt(FEATURE_MEAN_SQUARE / np.mean(values ** 2)))
    dense, logits = network.get_layer("features"), network.get_layer("logits")
    dense.kernel.assign(dense.kernel * scale)
    dense.bias.assign(dense.bias * scale)
    logits.kernel.assign(logits.kernel / scale)
    return scale


def save_atomically(network, path):
    """Writes the weights (not the optimizer's) to a temporary file beside `path`, then renames it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".shapes_features.", dir=directory)
    try:
        tmp = os.path.join(tmp_dir, "network.weights.h5")
        plain = features.build_shapes_network()  # uncompiled: no optimizer state in the file
        plain.set_weights(network.get_weights())
        plain.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def held_out_accuracy(weights, num_images=2000):
    """Accuracy of the saved network on the test split at each of EVAL_RESOLUTIONS."""
    classifier = features.shapes_features("logits", weights=weights)
    accuracy = {}
    for size in EVAL_RESOLUTIONS:
        images, labels = shapes.make_shapes(num_images, size, seed=TEST_SEED)
        predicted = np.argmax(classifier(images).numpy(), axis=-1)
        accuracy[f"{size}x{size}"] = float(np.mean(predicted == labels))
    return accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=features.SHAPES_WEIGHTS_PATH,
                        help="where to write the .weights.h5 (default: the shipped file)")
    parser.add_argument("--seed", type=int, default=0, help="weights, shuffle and resolution seed")
    parser.add_argument("--num-train", type=int, default=20000, help="training scenes (default: 20000)")
    parser.add_argument("--epochs", type=int, default=5, help="passes of --num-train images (default: 5)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    if not args.output.endswith(".weights.h5"):
        parser.error(f"--output must end in .weights.h5. Received: {args.output}")

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    network = features.build_shapes_network(seed=args.seed)
    extractor = features.FeatureExtractor(network, features.SHAPES_INPUT_SIZE, 8)
    steps = args.num_train // args.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps * args.epochs)
    network.compile(optimizer=keras.optimizers.Adam(schedule),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    data = training_data(args.num_train, args.batch_size, args.seed, extractor.preprocess)
    start = time.time()
    progress = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"epoch {epoch + 1}/{args.epochs}: loss {logs['loss']:.4f}, accuracy {logs['accuracy']:.4f}",
        file=sys.stderr, flush=True))
    history = network.fit(data, epochs=args.epochs, steps_per_epoch=steps, verbose=0,
                          callbacks=[progress])
    train_seconds = time.time() - start
    scale_images, _ = shapes.make_shapes(args.num_train, features.SHAPES_INPUT_SIZE, seed=TRAIN_SEED)
    scale = normalize_feature_scale(network, scale_images, extractor.preprocess)
    save_atomically(network, args.output)

    print(json.dumps({
        "output": args.output,
        "bytes": os.path.getsize(args.output),
        "parameters": int(network.count_params()),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "seed": args.seed, "num_train": args.num_train, "epochs": args.epochs,
        "train_resolutions": list(TRAIN_RESOLUTIONS),
        "train_seconds": round(train_seconds, 1),
        "feature_scale": scale, "feature_mean_square": FEATURE_MEAN_SQUARE,
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "held_out_accuracy": held_out_accuracy(args.output),
    }, indent=2))


if __name__ == "__main__":
    main()
