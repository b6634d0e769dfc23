"""The lowered training step kept across runs, so that a second start skips tracing and lowering.

XLA's persistent cache (`compilation_cache`) finds a compiled program by its
HLO, so every start still traces the Python step into a graph (~8 s at
ddpm-cifar10 on 2 cores) and lowers the graph to HLO (~5-10 s) before it can
look the program up. With lowered steps on, the first start of a
configuration also saves its step as StableHLO
(`tf.function.experimental_get_compiler_ir`), inside a TensorFlow function
(a `FunctionDef`) that reads the model's variables, runs the module through
one `XlaCallModule` op and writes the updated values back. Every start, this
one included, registers that function under a name made from the entry's
key and calls it, XLA-compiled, by that name: a later start traces nothing,
and XLA's cache, which knows a program by the function's name and its
lowered HLO, finds the program the first start compiled.

An entry is found by everything its step depends on: tfdiffusion's source,
the TensorFlow, Keras and TensorFlow Probability versions, the model's and
optimizer's classes and configurations, the model's plain attributes, the
dtype policy, the batch's shapes and dtypes, and every variable's path,
shape and dtype. Only a `DiffusionModel` whose network and optimizer come
from tfdiffusion or Keras, on one CPU device, is eligible: other code is not
part of that key.
"""

import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.compiler.tf2xla.ops import gen_xla_ops
from tensorflow.core.framework import function_pb2
from tensorflow.python.eager import context
from tensorflow.python.ops import gen_resource_variable_ops

from tfdiffusion import compilation_cache

__all__ = ["LoweredStepTraining", "LoweredTrainStep", "enabled", "ineligibility"]

_FORMAT = 3
# The registered function's name: the same in every run, so XLA's cache finds its program.
_FUNCTION_PREFIX = "tfdiffusion_lowered_train_step_"
# XlaCallModule's serialization version for a module given as text.
_CALL_MODULE_VERSION = 9
_TYPES = {"f32": tf.float32, "f16": tf.float16, "bf16": tf.bfloat16, "f64": tf.float64, "i1": tf.bool,
          "i8": tf.int8, "i32": tf.int32, "i64": tf.int64, "ui8": tf.uint8, "ui32": tf.uint32, "ui64": tf.uint64}
_OUR_MODULES = ("tfdiffusion.", "keras.")


def enabled() -> bool:
    """Lowered steps are on (`enable_compilation_cache(lowered_steps=True)`) with XLA's cache in use."""
    return compilation_cache.lowered_steps_directory() is not None


def _module_of(obj: Any) -> str:
    return type(obj).__module__ + "."


def ineligibility(model) -> Optional[str]:
    """Why `model`'s training step cannot be kept lowered, or None if it can."""
    # The exact class (named, not imported: model.py imports this module); a subclass may step differently.
    if (type(model).__module__, type(model).__qualname__) != ("tfdiffusion.model", "DiffusionModel"):
        return f"the model is a {type(model).__name__}, not a DiffusionModel"
    if not model.jit_compile or model.run_eagerly:
        return "the step is not compiled with XLA"
    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync != 1 or isinstance(strategy, tf.distribute.TPUStrategy):
        return "the step runs under a multi-replica or TPU strategy"
    if tf.config.list_logical_devices("GPU"):
        return "a GPU is present (steps are lowered for the CPU)"
    foreign = [type(layer).__name__ for layer in model._flatten_layers()
               if not _module_of(layer).startswith(_OUR_MODULES)]
    if foreign:
        return f"the network has layers from outside tfdiffusion and Keras ({foreign[0]})"
    if not _module_of(model.optimizer).startswith(_OUR_MODULES):
        return f"the optimizer {type(model.optimizer).__name__} comes from outside tfdiffusion and Keras"
    return None


@functools.lru_cache(maxsize=None)
def _source_digest() -> str:
    """SHA-256 of tfdiffusion's Python source files (their paths and contents)."""
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as file:
                    digest.update(file.read())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _state_variables(model) -> List[Any]:
    """The variables a training step may read or write: the model's, the optimizer's and the metrics'."""
    return list(model.variables) + list(model.optimizer.variables) + list(model.metrics_variables)


def _tf_variable(variable) -> tf.Variable:
    """The `tf.Variable` behind a Keras variable (its storage; reading it never autocasts)."""
    return getattr(variable, "value", variable) if not isinstance(variable, tf.Variable) else variable


def _variables_by_path(model) -> Dict[str, tf.Variable]:
    """Path -> `tf.Variable` of every state variable; ValueError if two share a path (no unique map)."""
    state = _state_variables(model)
    variables = {v.path: _tf_variable(v) for v in state}
    if len(variables) != len(state):
        raise ValueError("two of the model's variables share a path")
    return variables


def _entry_key(model, data_specs: Sequence[tf.TensorSpec]) -> str:
    import keras

    plain = {name: value for name, value in sorted(vars(model).items())
             if isinstance(value, (bool, int, float, str, type(None)))}
    described = dict(
        format=_FORMAT, source=_source_digest(),
        versions=[tf.__version__, keras.__version__, _version("tensorflow-probability")],
        model=[type(model).__qualname__, model.get_config(), plain],
        optimizer=[type(model.optimizer).__module__, type(model.optimizer).__qualname__,
                   model.optimizer.get_config()],
        policy=[keras.config.dtype_policy().name, keras.config.floatx()],
        data=[(spec.shape.as_list(), spec.dtype.name) for spec in data_specs],
        variables=[(v.path, list(v.shape), str(v.dtype)) for v in _state_variables(model)])
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def _runnable_text(text: str) -> Optional[str]:
    """The lowered module with its two MHLO-only ops in StableHLO/CHLO form, or None if others remain.

    `mhlo.copy` (the copy of each updated variable) becomes a same-shape
    reshape and `mhlo.erf` becomes `chlo.erf`: `XlaCallModule` reads
    StableHLO and CHLO only.
    """
    text = re.sub(r"= mhlo\.copy (%[\w#]+) : (tensor<[^>]*>)", r"= stablehlo.reshape \1 : (\2) -> \2", text)
    text = re.sub(r"= mhlo\.erf (%[\w#]+) : (tensor<[^>]*>)", r"= chlo.erf \1 : \2 -> \2", text)
    # Source locations (TF op names, Python files and lines) only name things in XLA's metadata; as
    # `unknown` they no longer weigh on parsing, lowering and the cache's fingerprint of the program.
    text = re.sub(r"(?m)^(#loc\d*) = loc\(.*\)$", r"\1 = loc(unknown)", text)
    return None if re.search(r"= mhlo\.", text) else text


def _signature(text: str) -> Tuple[List[List[int]], List[tf.DType], List[Tuple[int, int]]]:
    """Output shapes and dtypes of the module's `main`, and its (parameter, output) aliases."""
    header = text[:text.index("func.func @main")]
    aliases = [(int(p), int(o)) for p, o in re.findall(
        r"parameter_number = (\d+) : i64}, output_index = array<i64: (\d+)>", header)]
    main = text[text.index("func.func @main"):]
    main = main[:main.index("\n")]
    results = main[main.index(") -> (") + len(") -> ("):main.rindex(") {")]
    shapes, dtypes = [], []
    for dims, name in re.findall(r"tensor<((?:\d+x)*)(\w+)>", results):
        if name not in _TYPES:
            raise ValueError(f"the lowered step returns an element type it cannot map ({name})")
        shapes.append([int(d) for d in dims.split("x") if d])
        dtypes.append(_TYPES[name])
    return shapes, dtypes, aliases


def _write_atomically(path: str, entry: Dict[str, Any], function_def: function_pb2.FunctionDef) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, entry=np.frombuffer(json.dumps(entry).encode(), np.uint8),
                     function=np.frombuffer(function_def.SerializeToString(), np.uint8))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class LoweredTrainStep:
    """A `DiffusionModel`'s `train_step` that runs as one saved StableHLO module.

    `prepare(element_spec)` (eagerly, before the first step) loads the entry
    for the batch signature, or traces, lowers and saves it. An entry holds
    a TensorFlow function (a `FunctionDef`, XLA-compiled) that reads every
    variable, calls the module and writes the updated values back; it is
    registered with TensorFlow under a name made from the entry's key and
    called by that name, so a later start neither traces it nor finds its
    compiled program under another name. Called with a batch `data`
    (eagerly, by `DiffusionModel`'s train function), the object runs that
    function and returns the step's logs. A batch signature not prepared
    (e.g. shapes not fully known) compiles `train_step` itself, as without
    lowered steps.

    Args:
        model: an eligible `DiffusionModel` (see `ineligibility`).
    """

    def __init__(self, model):
        self.model = model
        self.folder = compilation_cache.lowered_steps_directory()
        self._calls: Dict[Tuple, Callable] = {}  # batch signature -> the registered function's caller
        self._fallback = None
        self.loaded: List[str] = []  # keys read from disk
        self.saved: List[str] = []  # keys lowered and saved by this process

    @staticmethod
    def _signature_of(structure) -> Tuple:
        flat = [x for x in tf.nest.flatten(structure) if x is not None]
        return tuple((tuple(x.shape.as_list()), x.dtype.name) for x in flat)

    def prepare(self, element_spec) -> None:
        """Loads or makes the entry for batches of `element_spec` (a `tf.data` element spec); eager."""
        # A part the batches do not hold (`(images, None, sample_weight)`) is None in the batches themselves.
        element_spec = tf.nest.map_structure(lambda spec: None if isinstance(spec, tf.NoneTensorSpec) else spec,
                                             element_spec)
        signature = self._signature_of(element_spec)
        flat = [x for x in tf.nest.flatten(element_spec) if x is not None]
        if signature in self._calls or not all(spec.shape.is_fully_defined() for spec in flat):
            return
        key = _entry_key(self.model, flat)
        path = os.path.join(self.folder, key + ".npz")
        try:
            entry, function_def = self._read(path)
            call = self._caller(entry, function_def, len(flat))
            self.loaded.append(key)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, message.DecodeError, tf.errors.OpError):
            # None yet, or unreadable (TensorFlow refuses its function): made anew.
            try:
                entry, function_def = self._make(element_spec, key)
            except ValueError as error:  # a step this module cannot keep: compiled as without lowered steps
                warnings.warn(f"tfdiffusion: this training step is not kept lowered ({error})", stacklevel=2)
                return
            call = self._caller(entry, function_def, len(flat))
            _write_atomically(path, entry, function_def)
            self.saved.append(key)
        self._calls[signature] = call

    @staticmethod
    def _read(path):
        """A saved entry and its function; raises OSError/ValueError/KeyError/DecodeError if unusable."""
        with np.load(path) as saved:
            entry = json.loads(saved["entry"].tobytes().decode())
            function_def = function_pb2.FunctionDef.FromString(saved["function"].tobytes())
        if entry.get("format") != _FORMAT:
            raise ValueError("an entry of another format")
        return entry, function_def

    def __call__(self, data):
        call = self._calls.get(self._signature_of(data))
        if call is None:
            if self._fallback is None:
                self._fallback = tf.function(self.model.train_step, jit_compile=True, autograph=False)
            return self._fallback(data)
        return call(*[x for x in tf.nest.flatten(data) if x is not None])

    def _make(self, structure, key):
        """Traces and lowers `train_step` for the batch `structure`, then the function around the module."""
        leaves = tf.nest.flatten(structure)
        specs = [tf.TensorSpec(leaf.shape, leaf.dtype) for leaf in leaves if leaf is not None]

        def step(*tensors):  # flat tensor arguments: the only kind `experimental_get_compiler_ir` takes
            given = iter(tensors)
            batch = tf.nest.pack_sequence_as(structure, [None if leaf is None else next(given) for leaf in leaves])
            return self.model.train_step(batch)

        traced = tf.function(step, jit_compile=True, autograph=False)
        concrete = traced.get_concrete_function(*specs)
        outputs = concrete.structured_outputs
        if not isinstance(outputs, dict) or not all(tf.is_tensor(v) for v in outputs.values()):
            raise ValueError("a lowered train step must return a flat dict of tensors")
        variables = _variables_by_path(self.model)
        by_handle = {id(variable.handle): path for path, variable in variables.items()}
        captures = []
        for captured in concrete.captured_inputs:
            if captured.dtype == tf.resource:
                if id(captured) not in by_handle:
                    raise ValueError("the train step reads a variable the model does not list")
                captures.append(by_handle[id(captured)])
            else:
                captures.append(captured.numpy())
        module = _runnable_text(traced.experimental_get_compiler_ir(*specs)(stage="stablehlo"))
        if module is None:
            raise ValueError("the lowered step holds MHLO ops XlaCallModule cannot read")
        return self._around_module(module, captures, sorted(outputs), specs, key, variables, by_handle)

    def _around_module(self, module, captures, output_names, specs, key, variables, by_handle):
        """The entry and the XLA-compiled function that reads the variables, calls `module` and writes them back.

        `captures` lists the module's inputs after the batch: a variable's path or a constant's value;
        `variables` maps paths to the model's variables and `by_handle` their handles' ids to paths.
        """
        shapes, dtypes, aliases = _signature(module)
        num_data, num_outputs = len(specs), len(output_names)
        if sorted(output for _, output in aliases) != list(range(num_outputs, len(shapes))):
            raise ValueError("the lowered step's outputs are not its logs followed by variable updates")
        encoded = module.encode()

        def step(*batch):
            # Raw read and assign ops: a thousand variables' Python wrappers would take seconds to trace.
            args = list(batch)
            for capture in captures:
                args.append(gen_resource_variable_ops.read_variable_op(variables[capture].handle,
                                                                       variables[capture].dtype)
                            if isinstance(capture, str) else tf.constant(capture))
            results = gen_xla_ops.xla_call_module(args, version=_CALL_MODULE_VERSION, module=encoded,
                                                  Sout=shapes, Tout=dtypes, platforms=["CPU"])
            writes = [gen_resource_variable_ops.assign_variable_op(
                variables[captures[parameter - num_data]].handle, results[output]) for parameter, output in aliases]
            with tf.control_dependencies(writes):
                return {name: tf.identity(results[i]) for i, name in enumerate(output_names)}

        concrete = tf.function(step, jit_compile=True, autograph=False).get_concrete_function(*specs)
        inputs = [by_handle[id(handle)] for handle in concrete.captured_inputs]
        function_def = function_pb2.FunctionDef()
        function_def.CopyFrom(concrete.function_def)
        function_def.signature.name = _FUNCTION_PREFIX + key
        entry = dict(format=_FORMAT, variables=inputs, outputs=output_names)
        return entry, function_def

    def _caller(self, entry, function_def, num_data):
        """Registers `function_def` with TensorFlow (once per process) and returns `call(*batch) -> logs`."""
        variables = _variables_by_path(self.model)
        missing = [path for path in entry["variables"] if path not in variables]
        if missing:
            raise ValueError(f"the entry names {len(missing)} variables this model lacks")
        handles = [variables[path].handle for path in entry["variables"]]
        names = entry["outputs"]
        if (len(function_def.signature.output_arg) != len(names)
                or len(function_def.signature.input_arg) != num_data + len(handles)
                or not function_def.attr["_XlaMustCompile"].b):
            raise ValueError("the entry's function does not match its description")
        context_ = context.context()
        name = function_def.signature.name
        if not context_.has_function(name):
            context_.add_function_def(function_def)
        encoded = name.encode()

        def call(*batch):
            return dict(zip(names, context_.call_function(encoded, [*batch, *handles], len(names))))

        return call


class LoweredStepTraining:
    """Mix-in for `DiffusionModel`: `fit` runs a `LoweredTrainStep` when lowered steps are on and apply.

    It needs the model's `optimizer`, `steps_per_execution`, `train_function`
    and `_build_optimizer_slots()`.
    """

    lowered_train_step: Optional[LoweredTrainStep] = None

    def _lowered_train_step(self) -> Optional[LoweredTrainStep]:
        """The model's `LoweredTrainStep` when lowered steps are on and it is eligible, else None."""
        if not enabled() or self.optimizer is None or ineligibility(self):
            return None
        if self.lowered_train_step is None:
            self.lowered_train_step = LoweredTrainStep(self)
        return self.lowered_train_step

    def _prepare_lowered_step(self, dataset: tf.data.Dataset) -> None:
        """Before `fit` trains on `dataset`: loads or makes the lowered step for its batches (if it applies)."""
        step = self._lowered_train_step()
        if step is not None:
            self._build_optimizer_slots()
            step.prepare(dataset.element_spec)

    def _use_lowered_train_function(self, force: bool) -> bool:
        """Makes the lowered step Keras' train function (if it applies); False when it does not."""
        if self._lowered_train_step() is None:
            return False
        if self.train_function is None or force:
            # No graph around the compiled step: tracing one would capture every variable again.
            self.train_function = self._lowered_train_function
        return True

    def _lowered_train_function(self, iterator):
        """Keras' train function for a lowered step: up to `steps_per_execution` batches, eagerly fetched."""
        logs = None
        for _ in range(self.steps_per_execution):
            try:
                data = next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                if logs is None:
                    raise StopIteration from None
                break
            logs = self.lowered_train_step(data)
        return logs
