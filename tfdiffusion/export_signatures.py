"""The serving signatures of an exported model: `generate_<sampler>` and `denoise`, with request checks before any work.

`ServingModule` is the `tf.Module` that `export.export_saved_model` saves. It
holds the EMA network's variables and, per sampler, an outer (never
compiled) `tf.function` that checks the request, draws x_T exactly as
`DiffusionModel.generate` does for one batch, and calls that sampler's
`ImageSampler.function`: the very function `generate` calls, so the exported
images equal `generate`'s. With `jit_compile`, only that inner function is
compiled by XLA, which drops `Assert` ops inside its clusters; the checks
live in the outer function and every tensor of the work depends on them.

A request whose images come out NaN or infinite (which uint8 would make
black: non-finite weights, or an overflow) fails with `NON_FINITE_IMAGES`
instead of returning them.

The batch cap holds twice: an `Assert` refuses a batch above it, and the
batch is sliced to `min(N, max_images)` before x_T is drawn, so no request
can make the graph allocate more than `max_images` images even if the
assert were removed.
"""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfdiffusion import random as tfd_random
from tfdiffusion import sampling

__all__ = ["NON_FINITE_IMAGES", "ServingModule", "example_inputs", "generate_input_specs", "request_values",
           "signature_name"]

# The start of a `generate` request's error when the sampled images hold NaN or infinite values.
NON_FINITE_IMAGES = "The sampled images hold NaN or infinite values (the exported weights may be non-finite)"


def signature_name(sampler: str) -> str:
    """The signature that samples with `sampler`, e.g. "generate_ddim"."""
    return f"generate_{sampler}"


def generate_input_specs(conditional: bool, option_names: Sequence[str]) -> List[tf.TensorSpec]:
    """The inputs of a `generate_<sampler>` signature, in order.

    Args:
        conditional: the model is class-conditional (`labels` `[N]` and
            `guidance_scale`) rather than unconditional (`num_images`).
        option_names: the sampler's run-time options (float32 scalars).

    Returns:
        `seed` int64 `[]`, `num_steps` int32 `[]`, then `labels` int32 `[N]`
        and `guidance_scale` float32 `[]`, or `num_images` int32 `[]`, then
        the options.
    """
    specs = [tf.TensorSpec([], tf.int64, name="seed"), tf.TensorSpec([], tf.int32, name="num_steps")]
    if conditional:
        specs += [tf.TensorSpec([None], tf.int32, name="labels"),
                  tf.TensorSpec([], tf.float32, name="guidance_scale")]
    else:
        specs += [tf.TensorSpec([], tf.int32, name="num_images")]
    return specs + [tf.TensorSpec([], tf.float32, name=name) for name in option_names]


def _check(condition: tf.Tensor, message: str, *values: tf.Tensor) -> tf.Operation:
    """An `Assert` op: fails the request with `message` and `values` when `condition` is false."""
    return tf.debugging.Assert(condition, [message, *values], summarize=8)


def _range_check(values: tf.Tensor, low: int, high: int, message: str) -> tf.Operation:
    """Asserts every entry of the int `values` is in [low, high] (an empty tensor passes)."""
    size = tf.size(values)
    smallest = tf.reduce_min(tf.concat([values, [low]], 0))
    largest = tf.reduce_max(tf.concat([values, [high]], 0))
    inside = (smallest >= low) & (largest <= high)
    return _check(tf.equal(size, 0) | inside, message, "smallest:", smallest, "largest:", largest)


def _ensure_shapes(inputs: Dict[str, tf.Tensor], specs: Sequence[tf.TensorSpec]) -> Dict[str, tf.Tensor]:
    """Each input through an `EnsureShape` op: its spec's rank and known dimensions, checked at run time.

    A signature's shapes are declarations that servers do not enforce (a
    `[1, 2]` label tensor, or a 4096x4096 `x_t`, would otherwise reach the
    network), and Grappler folds `tf.shape`-based checks using them;
    `EnsureShape` reads the real shape and names the input in its error
    ("Shape of tensor labels [1,2] is not compatible with expected shape [?]").
    """
    return {spec.name: tf.ensure_shape(inputs[spec.name], spec.shape, name=f"check_{spec.name}_shape")
            for spec in specs}


class _Untracked:
    """A reference the SavedModel does not follow (a plain object, not a trackable)."""

    def __init__(self, value: Any):
        self.value = value


class ServingModule(tf.Module):
    """The exported object: EMA weights and the signature functions.

    Args:
        model: the `DiffusionModel` (its `ema_network` is exported).
        samplers: the sampler names to export, e.g. `("ddim", "ddpm")`.
        max_images: the largest batch N a request may ask for.
        spacing: timestep spacing of the samplers (the model's by default).
        clip_denoised: clip predicted x_0 at each sampling step.
        jit_compile: compile the sampling loops (and `denoise`'s network
            call) with XLA.
        threshold: dynamic thresholding percentile of each predicted x_0, or
            None.
    """

    def __init__(self, model, samplers: Sequence[str], max_images: int, spacing: str, clip_denoised: bool,
                 jit_compile: bool, threshold: Optional[float] = None):
        super().__init__(name="tfdiffusion_serving")
        # Kept out of the saved object graph (only the variables below are saved).
        self._model = _Untracked(model)
        self.max_images = int(max_images)
        self.num_timesteps = int(model.diffusion.num_timesteps)
        self.image_shape = tuple(model.image_shape)
        self.num_classes = model.num_classes
        # The SavedModel holds exactly these variables: the EMA network's weights.
        self.ema_weights = [weight.value for weight in model.ema_network.weights]
        self.image_samplers = {name: model.image_sampler(name, spacing, clip_denoised, jit_compile, threshold)
                               for name in samplers}
        # Untracked: the `denoise` signature holds its graph; tracked, it would be saved (and traced) twice.
        self._denoise_inner = _Untracked(tf.function(self._predict, jit_compile=jit_compile, autograph=False))

    # ------------------------------------------------------------- checks
    def _batch_checks(self, size: tf.Tensor, what: str) -> List[tf.Operation]:
        return [_check((size >= 1) & (size <= self.max_images),
                       f"{what} must be between 1 and max_images={self.max_images} (the batch cap chosen "
                       f"at export). Received:", size)]

    def _label_checks(self, labels: tf.Tensor, allow_null: bool) -> List[tf.Operation]:
        high = self.num_classes if allow_null else self.num_classes - 1
        message = (f"`labels` must be in [0, {self.num_classes}) (or {self.num_classes}, the null label)"
                   if allow_null else f"`labels` must be in [0, {self.num_classes})")
        return [_range_check(labels, 0, high, message + " for this model. Received values")]

    def _finite_checks(self, named: Dict[str, tf.Tensor], non_negative: Sequence[str] = ()) -> List[tf.Operation]:
        checks = []
        for name, value in named.items():
            ok = tf.reduce_all(tf.math.is_finite(value))
            expected = "a finite number"
            if name in non_negative:
                ok = ok & tf.reduce_all(value >= 0.0)
                expected = "a finite number >= 0"
            checks.append(_check(ok, f"`{name}` must be {expected}. Received:", value))
        return checks

    # ----------------------------------------------------------- generate
    def generate_function(self, sampler: str) -> tf.types.experimental.ConcreteFunction:
        """The concrete `generate_<sampler>` signature function (inputs: `generate_input_specs`)."""
        image_sampler = self.image_samplers[sampler]
        conditional = self.num_classes is not None
        option_names = image_sampler.option_names
        min_steps = image_sampler.sampler.min_steps

        def generate(*args):
            inputs = _ensure_shapes(dict(zip([spec.name for spec in specs], args)), specs)
            checks = self._generate_checks(inputs, conditional, option_names, min_steps)
            with tf.control_dependencies(checks):
                # The cap by construction: never more than max_images rows from here on.
                size = tf.size(inputs["labels"]) if conditional else inputs["num_images"]
                batch = tf.clip_by_value(size, 0, self.max_images)
                shape = tf.concat([[batch], self.image_shape], 0)
                noise, batch_seed = sampling.initial_noise(tfd_random.seed_pair(inputs["seed"]), 0, shape)
                sampler_args = [noise, batch_seed]
                if conditional:
                    sampler_args.append(inputs["labels"][:batch])
                sampler_args.append(tf.identity(inputs["num_steps"]))
                if conditional:
                    sampler_args.append(tf.identity(inputs["guidance_scale"]))
                sampler_args += [tf.identity(inputs[name]) for name in option_names]
            images, finite = image_sampler.function(*sampler_args)
            # A NaN image would come out black: the request fails instead, saying how many (outside XLA).
            bad = tf.size(finite) - tf.reduce_sum(tf.cast(finite, tf.int32))
            with tf.control_dependencies([_check(tf.equal(bad, 0), f"{NON_FINITE_IMAGES}. Non-finite images, "
                                                 "batch size:", bad, tf.size(finite))]):
                return {"images": tf.identity(images)}

        specs = generate_input_specs(conditional, option_names)
        return tf.function(generate, input_signature=specs, autograph=False).get_concrete_function()

    def _generate_checks(self, inputs, conditional, option_names, min_steps) -> List[tf.Operation]:
        num_steps = inputs["num_steps"]
        checks = [_check((num_steps >= min_steps) & (num_steps <= self.num_timesteps),
                         f"`num_steps` must be in [{min_steps}, {self.num_timesteps}] (T = "
                         f"{self.num_timesteps}). Received:", num_steps)]
        if conditional:
            labels = inputs["labels"]
            checks += self._batch_checks(tf.size(labels), "The number of `labels` (one per image)")
            checks += self._label_checks(labels, allow_null=False)
            checks += self._finite_checks({"guidance_scale": inputs["guidance_scale"]})
        else:
            checks += self._batch_checks(inputs["num_images"], "`num_images`")
        return checks + self._finite_checks({name: inputs[name] for name in option_names},
                                            non_negative=option_names)

    # ------------------------------------------------------------ denoise
    def _predict(self, x_t, t, labels):
        model_kwargs = {} if labels is None else {"y": labels}
        network = self._model.value.sampling_network

        def model_fn(x, timesteps, y=None):
            return network(x, timesteps, y)

        out = self._model.value.diffusion.model_predictions(model_fn, x_t, t, clip_denoised=False,
                                                      model_kwargs=model_kwargs)
        outputs = {"model_output": out["model_output"], "pred_eps": out["pred_eps"],
                   "pred_xstart": out["pred_xstart"]}
        if out["var_values"] is not None:
            outputs["var_values"] = out["var_values"]
        return outputs

    def denoise_input_specs(self) -> List[tf.TensorSpec]:
        """`x_t` float32 `[N, H, W, C]`, `t` int32 `[N]`, and `labels` int32 `[N]` if conditional."""
        specs = [tf.TensorSpec((None,) + self.image_shape, tf.float32, name="x_t"),
                 tf.TensorSpec([None], tf.int32, name="t")]
        if self.num_classes is not None:
            specs.append(tf.TensorSpec([None], tf.int32, name="labels"))
        return specs

    def denoise_example(self, batch: int) -> Dict[str, np.ndarray]:
        """A valid `denoise` request of `batch` images: zeros at t = 0 (class 0)."""
        values = {"x_t": np.zeros((batch,) + self.image_shape, np.float32), "t": np.zeros([batch], np.int32)}
        if self.num_classes is not None:
            values["labels"] = np.zeros([batch], np.int32)
        return values

    def denoise_function(self) -> tf.types.experimental.ConcreteFunction:
        """The concrete `denoise` signature function: the network's predictions at `(x_t, t)`.

        Outputs (unclipped, float32 `[N, H, W, C]`): `model_output` (the
        network's mean prediction in its `model_mean_type`), `pred_eps`,
        `pred_xstart`, and `var_values` for a learned-variance model. `labels`
        may hold the null label (`num_classes`), for guidance on the client.
        """
        conditional = self.num_classes is not None

        def denoise(x_t, t, labels=None):
            specs = self.denoise_input_specs()
            inputs = _ensure_shapes({"x_t": x_t, "t": t, "labels": labels}, specs)
            x_t, t, labels = inputs["x_t"], inputs["t"], inputs.get("labels")
            size = tf.shape(x_t)[0]
            checks = self._batch_checks(size, "The batch of `x_t`")
            checks.append(_check(tf.equal(tf.size(t), size), "`t` must have one timestep per image of "
                                 "`x_t`. Received sizes:", tf.size(t), size))
            checks.append(_range_check(t, 0, self.num_timesteps - 1,
                                       f"`t` must be in [0, {self.num_timesteps}). Received values"))
            checks += self._finite_checks({"x_t": x_t})
            if conditional:
                checks.append(_check(tf.equal(tf.size(labels), size), "`labels` must have one label per "
                                     "image of `x_t`. Received sizes:", tf.size(labels), size))
                checks += self._label_checks(labels, allow_null=True)
            with tf.control_dependencies(checks):
                batch = tf.clip_by_value(size, 0, self.max_images)
                x_t, t = x_t[:batch], t[:batch]
                labels = labels[:batch] if conditional else None
            return self._denoise_inner.value(x_t, t, labels)

        return tf.function(denoise, input_signature=self.denoise_input_specs(),
                           autograph=False).get_concrete_function()

    def signatures(self, default_sampler: str) -> Dict[str, Any]:
        """Signature name -> concrete function, `generate` and `serving_default` being `default_sampler`'s."""
        signatures = {signature_name(name): self.generate_function(name) for name in self.image_samplers}
        signatures["generate"] = signatures["serving_default"] = signatures[signature_name(default_sampler)]
        signatures["denoise"] = self.denoise_function()
        return signatures


def example_inputs(specs: Sequence[tf.TensorSpec], values: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Request values as numpy arrays of the signature's dtypes (for warm-up and tests)."""
    return {spec.name: np.asarray(values[spec.name], dtype=spec.dtype.as_numpy_dtype) for spec in specs}


def request_values(conditional: bool, option_defaults: Dict[str, float], batch: int, num_steps: int,
                   seed: int = 0) -> Dict[str, Any]:
    """Plain values of a small `generate` request: `batch` images, class 0, no guidance, default options."""
    values: Dict[str, Any] = {"seed": seed, "num_steps": num_steps}
    if conditional:
        values.update(labels=[0] * batch, guidance_scale=1.0)
    else:
        values["num_images"] = batch
    values.update(option_defaults)
    return values
