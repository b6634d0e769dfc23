"""Sample quality per network evaluation for every sampler: shapes FID and class accuracy against NFE.

    # train the shapes preset with the CLI first (~40 min on 2 busy cores), then the grid
    python benchmarks/quality_per_step.py --output-dir benchmarks/results/quality_per_step
    # or with a trained model
    python benchmarks/quality_per_step.py --model runs/shapes/model.keras --output-dir OUT

For each curve (a sampler with its spacing and x_0 clipping or thresholding)
and each number of network evaluations (NFE, default 5 10 20 50; 100 and 250
with `--nfe`),
draws `--per-class` class-conditional images of each of the 8 classes with
`DiffusionModel.generate` (the same seed, hence the same x_T, for every
point; guidance as the preset's), and computes the shapes FID
(`metrics.FrechetInceptionDistance` over `features.shapes_features()`)
against held-out real shapes (the test split, data seed 1) and the class
accuracy of the shipped shapes classifier (`metrics.class_accuracy`). A
Heun step costs 2 evaluations (the last 1), so Heun runs (NFE + 1) // 2 steps.
The "ablation" block (run first) compares spacings and x_0 clipping or
thresholding for DPM-Solver++(2M) at 10 and 20 NFE. The "confirm" block
(run last) repeats the points the README's claims rest on (`--confirm`,
default DDIM-50, DDIM-20 and the 20-NFE solvers) with `--confirm-per-class`
images per class (default 128: 1024 images), where the FID's sampling noise
is smaller.

Writes OUT/results.json (after every point, so an interrupted run keeps its
points and `--resume` continues it) and OUT/quality_per_step.png
(matplotlib: `pip install tfdiffusion[bench]`). Progress goes to stderr.
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

# name: (sampler, spacing (None: the model's), clip_denoised, threshold, options, description)
CURVES = {
    "ddim": ("ddim", None, True, None, {}, "DDIM, the model's spacing, x0 clipped (tfdiffusion's default)"),
    "ddpm": ("ddpm", None, True, None, {}, "DDPM ancestral over respaced steps"),
    "dpmpp_2m": ("dpmpp_2m", "karras", True, None, {}, "DPM-Solver++(2M), Karras sigmas, x0 clipped"),
    "dpmpp_2m_threshold": ("dpmpp_2m", "karras", True, 0.995, {},
                           "DPM-Solver++(2M), Karras sigmas, dynamic thresholding p=0.995"),
    # diffusers' DPMSolverMultistepScheduler with these settings gives the same samples (checked to 1e-5).
    "dpmpp_2m_diffusers": ("dpmpp_2m", "trailing", False, None, {},
                           "diffusers-style DPM-Solver++(2M): trailing steps, no clipping or thresholding"),
    "dpmpp_3m": ("dpmpp_3m", "karras", True, None, {}, "DPM-Solver++(3M), Karras sigmas, x0 clipped"),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", "karras", True, None, {}, "SDE-DPM-Solver++(2M), Karras sigmas, clipped"),
    "euler": ("euler", "karras", True, None, {}, "Euler (EDM), Karras sigmas, clipped"),
    "heun": ("heun", "karras", True, None, {}, "Heun (EDM), Karras sigmas, clipped"),
    "euler_ancestral": ("euler_ancestral", "karras", True, None, {}, "Euler ancestral, Karras sigmas, clipped"),
    # The same solvers on the model's own spacing (the shapes preset's: leading), which the ablation favours.
    "dpmpp_2m_leading": ("dpmpp_2m", None, True, None, {}, "DPM-Solver++(2M), the model's spacing, clipped"),
    "dpmpp_3m_leading": ("dpmpp_3m", None, True, None, {}, "DPM-Solver++(3M), the model's spacing, clipped"),
    "heun_leading": ("heun", None, True, None, {}, "Heun (EDM), the model's spacing, clipped"),
}
# The points the README's claims rest on, repeated with more images.
CONFIRM = ("ddim@50", "ddim@20", "dpmpp_2m_leading@20", "dpmpp_2m_diffusers@20")
ABLATION_NFE = (10, 20)
ABLATION = {f"dpmpp_2m/{spacing}/{x0}": ("dpmpp_2m", spacing, x0 == "clip", 0.995 if x0 == "threshold" else None,
                                         {}, f"DPM-Solver++(2M), {spacing} spacing, x0 {x0}")
            for spacing in ("leading", "trailing", "karras") for x0 in ("none", "clip", "threshold")}


def num_steps_for(sampler, nfe):
    """Steps giving at most `nfe` network evaluations (Heun: 2 per step, 1 for the last)."""
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def train_shapes(run_dir):
    """Trains the shapes preset with the CLI into `run_dir`; returns the model path."""
    command = [sys.executable, "-m", "tfdiffusion.cli", "train", "--preset", "shapes", "--output-dir", run_dir]
    print("Training:", " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr)
    return os.path.join(run_dir, "model.keras")


def machine():
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "load_average_at_start": load}


class Evaluator:
    """FID and class accuracy of generated shapes against the held-out split."""

    def __init__(self, image_size, num_real):
        from tfdiffusion import features, shapes
        self.features = features.shapes_features()
        self.classifier = features.shapes_features("logits")
        self.real, _ = shapes.make_shapes(num_real, image_size, seed=1)

    def __call__(self, images, labels):
        from tfdiffusion import metrics
        fid = metrics.FrechetInceptionDistance(self.features)
        fid.update_state(self.real, images)
        return float(fid.result()), metrics.class_accuracy(images, labels, self.classifier)


def point(model, evaluator, curve, nfe, labels, args):
    sampler, spacing, clip, threshold, options, _ = curve
    steps = num_steps_for(sampler, nfe)
    start = time.time()
    images = model.generate(len(labels), sampler=sampler, num_steps=steps, seed=args.seed, labels=labels,
                            guidance_scale=args.guidance_scale, spacing=spacing, clip_denoised=clip,
                            threshold=threshold, options=options or None, batch_size=args.batch_size)
    seconds = time.time() - start
    fid, accuracy = evaluator(images, labels)
    from tfdiffusion import samplers
    true_nfe = samplers.get_sampler(sampler)(model.diffusion).network_evaluations(steps)
    return {"nfe": true_nfe, "target_nfe": nfe, "steps": steps, "num_images": int(len(labels)), "fid": round(fid, 4),
            "class_accuracy": round(accuracy, 4), "seconds": round(seconds, 1)}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_fid, ax_acc) = plt.subplots(1, 2, figsize=(11, 5))
    colors = plt.get_cmap("tab20").colors
    for index, (name, curve) in enumerate(results["curves"].items()):
        points = sorted(curve["points"], key=lambda p: p["nfe"])
        if not points:
            continue
        nfe = [p["nfe"] for p in points]
        style = dict(marker="o", markersize=3, label=name, linewidth=1.4, color=colors[index % len(colors)],
                     linestyle="-." if name.endswith("_leading") else "-")
        if name == "dpmpp_2m_diffusers":
            style.update(linestyle="--", color="black")
        ax_fid.plot(nfe, [p["fid"] for p in points], **style)
        ax_acc.plot(nfe, [p["class_accuracy"] for p in points], **style)
    floor = results["reference"]["real_vs_real_fid"]
    ax_fid.axhline(floor, color="grey", linewidth=0.8, linestyle=":", label="real vs real")
    ax_acc.axhline(results["reference"]["real_class_accuracy"], color="grey", linewidth=0.8, linestyle=":")
    ddim50 = [p for p in results["curves"].get("ddim", {}).get("points", []) if p["target_nfe"] == 50]
    if ddim50:  # the target: a 20-NFE solver within 10% of DDIM-50
        ax_fid.axhline(ddim50[0]["fid"], color="tab:blue", linewidth=0.8, linestyle="--", label="DDIM-50")
        ax_acc.axhline(ddim50[0]["class_accuracy"], color="tab:blue", linewidth=0.8, linestyle="--")
    for ax, label in ((ax_fid, "shapes FID (lower is better)"), (ax_acc, "class accuracy")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", linewidth=0.3)
    ax_fid.set_yscale("log")
    handles, names = ax_fid.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=6, fontsize=7, frameon=False)
    n = results["settings"]["num_images"]
    fig.suptitle(f"Shapes preset, {n} images per point, guidance {results['settings']['guidance_scale']:g}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras DiffusionModel trained on shapes (default: train one)")
    parser.add_argument("--output-dir", required=True, help="where results.json and the PNG go")
    parser.add_argument("--per-class", type=int, default=32, help="images per class per point (default: 32)")
    parser.add_argument("--nfe", default="5,10,20,50", help="NFE grid (default: 5,10,20,50)")
    parser.add_argument("--curves", default=",".join(CURVES), help="curves to run (default: all)")
    parser.add_argument("--max-nfe", default="", help="per-curve NFE caps, e.g. ddpm=100,heun=100")
    parser.add_argument("--no-ablation", action="store_true", help="skip the spacing/clipping ablation")
    parser.add_argument("--guidance-scale", type=float, help="(default: the shapes preset's)")
    parser.add_argument("--num-real", type=int, default=2048, help="held-out real images (default: 2048)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per network batch (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--resume", action="store_true", help="keep the points of an earlier results.json")
    parser.add_argument("--confirm", default=",".join(CONFIRM),
                        help=f"CURVE@NFE points repeated with more images (default: {','.join(CONFIRM)}; '' for none)")
    parser.add_argument("--confirm-per-class", type=int, default=128,
                        help="images per class for the --confirm points (default: 128)")
    parser.add_argument("--max-step-ratio", type=float,
                        help="DPM-Solver++'s step-ratio bound (samplers.dpm_solver.MAX_STEP_RATIO; default: the "
                             "package's; inf: no bound, as before it existed)")
    args = parser.parse_args(argv)

    import keras  # noqa: F401  (after argparse: --help stays fast)
    import tfdiffusion  # noqa: F401  (registers the classes for loading)
    from tfdiffusion import presets, shapes
    from tfdiffusion.samplers import dpm_solver
    if args.max_step_ratio is not None:
        dpm_solver.MAX_STEP_RATIO = args.max_step_ratio  # read when the samplers are traced, below

    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "results.json")
    started = time.time()
    model_path = args.model or train_shapes(os.path.join(args.output_dir, "shapes-run"))
    train_seconds = None if args.model else round(time.time() - started, 1)
    model = keras.models.load_model(model_path)
    if args.guidance_scale is None:
        args.guidance_scale = presets.get_preset("shapes").guidance_scale
    caps = dict((k, int(v)) for k, v in (item.split("=") for item in args.max_nfe.split(",") if item))
    grid = [int(v) for v in args.nfe.split(",")]
    labels = np.repeat(np.arange(len(shapes.CLASS_NAMES)), args.per_class).astype(np.int32)
    evaluator = Evaluator(model.image_shape[0], args.num_real)

    with open(model_path, "rb") as f:
        model_md5 = hashlib.md5(f.read()).hexdigest()
    results = {"benchmark": "tfdiffusion/benchmarks/quality_per_step.py", "model": model_path, "model_md5": model_md5,
               "train_seconds": train_seconds, "machine": machine(),
               "settings": {"num_images": int(len(labels)), "per_class": args.per_class, "seed": args.seed,
                            "guidance_scale": args.guidance_scale, "num_real": args.num_real,
                            "model_spacing": model.spacing, "num_timesteps": model.diffusion.num_timesteps,
                            "mean_type": model.diffusion.model_mean_type,
                            "max_step_ratio": dpm_solver.MAX_STEP_RATIO},
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "curves": {}, "ablation": {}, "confirm": {}}
    if args.resume and os.path.exists(json_path):
        with open(json_path) as f:
            earlier = json.load(f)
        for block in ("curves", "ablation", "confirm"):
            results[block] = earlier.get(block, {})
        results["command"] = earlier.get("command", "") + " ; resumed: " + results["command"]
        results["machine"]["earlier"] = earlier.get("machine")
    real_b, labels_b = shapes.make_shapes(len(labels), model.image_shape[0], seed=2)
    fid_floor, real_accuracy = evaluator(real_b, labels_b)
    results["reference"] = {"real_vs_real_fid": round(fid_floor, 4), "real_class_accuracy": real_accuracy,
                            "note": f"{len(labels)} held-out real images (seed 2) against the reference set"}

    def save():
        results["total_seconds"] = round(time.time() - started, 1)
        with open(json_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(json_path + ".tmp", json_path)

    jobs = [] if args.no_ablation else [("ablation", name, curve, nfe) for name, curve in ABLATION.items()
                                        for nfe in ABLATION_NFE]
    # Curve by curve up to 100 NFE, then the costly large counts: an interrupted run keeps whole curves.
    curve_jobs = [("curves", name, CURVES[name], nfe) for name in args.curves.split(",") for nfe in grid
                  if nfe <= caps.get(name, nfe)]
    jobs += sorted(curve_jobs, key=lambda job: job[3] > 100)
    confirm_labels = np.repeat(np.arange(len(shapes.CLASS_NAMES)), args.confirm_per_class).astype(np.int32)
    if args.confirm:
        real_c, labels_c = shapes.make_shapes(len(confirm_labels), model.image_shape[0], seed=2)
        floor_c, _ = evaluator(real_c, labels_c)
        results["reference"]["confirm_real_vs_real_fid"] = round(floor_c, 4)
        for item in args.confirm.split(","):
            name, nfe = item.split("@")
            jobs.append(("confirm", name, CURVES[name], int(nfe)))
    for block, name, curve, nfe in jobs:
        entry = results[block].setdefault(name, {"description": curve[5], "points": []})
        if any(p["target_nfe"] == nfe for p in entry["points"]):
            continue
        entry["points"].append(point(model, evaluator, curve, nfe, confirm_labels if block == "confirm" else labels,
                                     args))
        print(f"{block} {name} NFE {nfe}: {entry['points'][-1]}", file=sys.stderr, flush=True)
        save()
    save()
    plot(results, os.path.join(args.output_dir, "quality_per_step.png"))
    print(json.dumps({block: {name: {p["nfe"]: (p["fid"], p["class_accuracy"]) for p in c["points"]}
                             for name, c in results[block].items()} for block in ("curves", "confirm")}, indent=1))


if __name__ == "__main__":
    main()
