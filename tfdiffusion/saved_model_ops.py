"""The ops tfdiffusion's own SavedModel exports use: the allow-list of `saved_model_check.check_saved_model_ops`.

How the lists were made: `python -m tests.saved_model_inventory` exports
every kind of model `export_saved_model` writes (class-conditional and
unconditional; epsilon, x0 and v prediction; fixed and learned variances;
every registered sampler and spacing, clipping and dynamic thresholding,
zero terminal SNR; XLA on and off; warm-up requests; the UNet's options;
float32, mixed_bfloat16 and mixed_float16 networks), adds the SavedModels
shipped in `saved_models/` (written by an earlier version of the export:
`Prod` and `SquaredDifference` come from them), collects the op types of
every node of every graph and library function of each `saved_model.pb`,
and prints them split by where they occur: `ALLOWED_OPS` occur anywhere a
signature, the init op or a method of the loaded object reaches;
`SAVE_OPS` occur only in the variable saver's save function, `RESTORE_OPS`
only in its restore function.
Made with TensorFlow 2.21 and Keras 3.15. `tests/test_saved_model_check.py`
exports the same kinds and fails if one of them uses an op outside these
lists: regenerate them with the script then (and check that every new op is
pure computation: no files, network, processes or Python).

No list holds an op that reads or writes files, talks to other processes
or runs Python, except the saver's checkpoint ops (`SaveV2` and
`MergeV2Checkpoints` in `SAVE_OPS`, `RestoreV2` in `RESTORE_OPS`), which the
check accepts only where the save (restore) function alone reaches them
(see `saved_model_check`).
"""

__all__ = ["ALLOWED_OPS", "RESTORE_OPS", "SAVE_OPS"]

ALLOWED_OPS = frozenset({
    "Abs", "AddV2", "All", "Assert", "BatchMatMulV2", "BiasAdd", "BitwiseOr", "BroadcastTo", "Cast", "ConcatV2",
    "Const", "Conv2D", "Cos", "EnsureShape", "Equal", "Exp", "Expm1", "Fill", "Floor", "FloorDiv", "FloorMod",
    "GatherV2", "Greater", "GreaterEqual", "Identity", "IdentityN", "If", "IsFinite", "LeftShift", "Less",
    "LessEqual", "Log", "Log1p", "LogicalAnd", "LogicalOr", "MatMul", "Max", "Maximum", "Mean", "Min", "Minimum",
    "Mul", "Neg", "NoOp", "OnesLike", "Pack", "Pad", "Placeholder", "Pow", "Prod", "Range", "ReadVariableOp",
    "RealDiv", "Reshape", "Round", "Rsqrt", "SelectV2", "Shape", "Sigmoid", "Sin", "Size", "Softmax", "Split",
    "Sqrt", "Square", "SquaredDifference", "Squeeze", "StatefulPartitionedCall", "StatelessRandomNormalV2",
    "StatelessRandomUniformFullIntV2", "StridedSlice", "Sub", "Sum", "TopKV2", "Transpose", "VarHandleOp", "While",
    "ZerosLike",
})
SAVE_OPS = frozenset({
    "DisableCopyOnRead", "MergeV2Checkpoints", "SaveV2", "Select", "ShardedFilename", "StaticRegexFullMatch",
    "StringJoin",
})
RESTORE_OPS = frozenset({
    "AssignVariableOp", "RestoreV2",
})
