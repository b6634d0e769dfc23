"""What a SavedModel's graph would run, read from `saved_model.pb` before loading: the op check of `load_saved_model`.

A SavedModel is a program: `tf.saved_model.load` and TF Serving run the ops
its graph holds, and a graph can read or write files (`ReadFile`,
`WriteFile`, `SaveV2`), run Python (`PyFunc`) or talk to other machines.
`check_saved_model_ops` parses `saved_model.pb` (the protocol buffer only,
nothing is executed) and refuses a graph holding an op that tfdiffusion's
own exports never use (`saved_model_ops.ALLOWED_OPS`), naming the op and
the signature or function that holds it.

Every meta graph is checked, with its main graph's nodes and every function
of its library (functions called by other functions, loop bodies and
branches are library functions too). Each node and function is traced back
to what can run it: a signature, the init op, the loaded object's methods,
or the variable saver (`saver_def`: the save and restore functions).

The saver is the one place where file ops belong. A SavedModel's save
function writes a checkpoint (`SaveV2`, `MergeV2Checkpoints`) and its
restore function reads one (`RestoreV2`), at the path the caller feeds to
`saver_filename`. `tf.saved_model.load` runs neither (it restores the
variables with ops of its own, built in Python); TF Serving runs the restore
function once, with the version's own `variables/` path; nothing that loads
a model runs the save function. So `saved_model_ops.SAVE_OPS` are accepted
only in code that the save function alone reaches, and
`saved_model_ops.RESTORE_OPS` (reading a checkpoint into the model's own
variables) only in code that the restore function alone reaches; anywhere
a signature, the init op or the loaded object's methods reach (where a
request could run them), and in the restore function for the save ops,
they are refused.

What the check does not do: it does not judge the values an accepted op
computes (a graph of allowed ops can still return wrong images, or be slow
or large), nor the variables' contents, nor files beside the graph (the
assets are only read by ops that the check refuses).
"""

import collections
import os
import re
from typing import Container, Dict, Iterable, List, Mapping, Set

from tfdiffusion import saved_model_ops

__all__ = ["UnsafeSavedModelError", "check_saved_model_ops", "op_sites", "read_saved_model_proto"]

SAVE = "the saver's save function"
RESTORE = "the saver's restore function"
# What the code only one of the saver's functions reaches may also hold.
_SAVER_ONLY = {SAVE: saved_model_ops.SAVE_OPS, RESTORE: saved_model_ops.RESTORE_OPS}

# What a refused op does, for the message (the allow-list decides; this only explains).
_KINDS = (
    (re.compile(r"PyFunc"), "runs Python code"),
    (re.compile(r"File|Reader|Save|Restore|Checkpoint|Writer|Summary|Dataset|Iterator|ImmutableConst|Vocab|"
                r"Remap|Record"), "reads or writes files"),
    (re.compile(r"Rpc|Grpc|Collective|Send|Recv|Remote|Distributed|Tpu|TPU|Coordination"),
     "communicates with other processes or machines"),
    (re.compile(r"Print|Debug"), "prints or writes debugging output (possibly to a file)"),
)


class UnsafeSavedModelError(ValueError):
    """A SavedModel's graph holds ops that tfdiffusion's exports never use.

    Attributes:
        path: the version directory.
        ops: `{op type: [where it is, e.g. "signature 'generate_ddim' (function '__inference_...')"]}`.
    """

    def __init__(self, message: str, path: str, ops: Mapping[str, List[str]]):
        super().__init__(message)
        self.path = path
        self.ops = dict(ops)


def read_saved_model_proto(path: str):
    """The parsed `saved_model.pb` of a version directory (a `tensorflow.core.protobuf` `SavedModel`).

    Raises:
        FileNotFoundError: no `saved_model.pb` in `path`.
        ValueError: the file is not a SavedModel protocol buffer.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    file_path = os.path.join(os.fspath(path), "saved_model.pb")
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"{file_path!r} does not exist: expected a SavedModel version directory")
    proto = saved_model_pb2.SavedModel()
    with open(file_path, "rb") as file:
        try:
            proto.ParseFromString(file.read())
        except DecodeError as error:
            raise ValueError(f"{file_path!r} is not a SavedModel protocol buffer ({error})") from None
    return proto


def _node_name(tensor_name: str) -> str:
    """"^name", "name:0" or "name" -> "name"."""
    return tensor_name.lstrip("^").split(":")[0]


def _called_functions(node, function_names: Container[str]) -> Iterable[str]:
    """The library functions a node calls: by op type (a direct call) or through function attributes
    (`f`, `then_branch`, `body`, `branches`, ...)."""
    if node.op in function_names:
        yield node.op
    for value in node.attr.values():
        if value.func.name:
            yield value.func.name
        for function in value.list.func:
            yield function.name


def _meta_graph_sites(meta_graph) -> Dict[str, Dict[str, Set[str]]]:
    """`{op type: {unit: roots}}` for one meta graph.

    A unit is "the main graph" (its nodes) or "function 'NAME'"; its roots are
    what can run it: "signature 'NAME'", "the init op", "the loaded object's
    function 'NAME'", `SAVE`, `RESTORE`, or none (reachable from nothing: still checked).
    """
    graph = meta_graph.graph_def
    functions = {function.signature.name: function for function in graph.library.function}
    nodes = {node.name: node for node in graph.node}
    roots: Dict[str, Set[str]] = collections.defaultdict(set)  # root label -> main-graph node names
    for name, signature in meta_graph.signature_def.items():
        label = "the init op" if name == "__saved_model_init_op" else f"signature {name!r}"
        for info in list(signature.inputs.values()) + list(signature.outputs.values()):
            roots[label].add(_node_name(info.name))
    saver = meta_graph.saver_def  # (its filename placeholder is an input of both)
    for label, tensor in ((SAVE, saver.save_tensor_name), (RESTORE, saver.restore_op_name)):
        if tensor:
            roots[label].add(_node_name(tensor))
    for key, collection in meta_graph.collection_def.items():
        label = "the init op" if "init_op" in key or "main_op" in key else f"collection {key!r}"
        for value in collection.node_list.value:
            roots[label].add(_node_name(value))

    node_roots: Dict[str, Set[str]] = collections.defaultdict(set)
    function_roots: Dict[str, Set[str]] = collections.defaultdict(set)

    def visit_function(name: str, label: str) -> None:
        pending = [name]
        while pending:
            current = pending.pop()
            if current not in functions or label in function_roots[current]:
                continue
            function_roots[current].add(label)
            for node in functions[current].node_def:
                pending.extend(_called_functions(node, functions))

    for label, names in roots.items():
        pending = list(names)
        while pending:
            current = pending.pop()
            if current not in nodes or label in node_roots[current]:
                continue
            node_roots[current].add(label)
            node = nodes[current]
            pending.extend(_node_name(name) for name in node.input)
            for function in _called_functions(node, functions):
                visit_function(function, label)
    for name in meta_graph.object_graph_def.concrete_functions:
        visit_function(name, f"the loaded object's function {name!r}")

    sites: Dict[str, Dict[str, Set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for node in graph.node:
        if node.op not in functions:
            sites[node.op]["the main graph"] |= node_roots.get(node.name, set())
    for name, function in functions.items():
        for node in function.node_def:
            if node.op not in functions:
                sites[node.op][f"function {name!r}"] |= function_roots.get(name, set())
    return sites


def op_sites(proto) -> Dict[str, Dict[str, Set[str]]]:
    """Every op type of every meta graph: `{op type: {unit: roots}}` (see `check_saved_model_ops`).

    Args:
        proto: a parsed `SavedModel` (`read_saved_model_proto`).
    """
    merged: Dict[str, Dict[str, Set[str]]] = collections.defaultdict(lambda: collections.defaultdict(set))
    for index, meta_graph in enumerate(proto.meta_graphs):
        prefix = "" if len(proto.meta_graphs) == 1 else f"meta graph {index}: "
        for op, units in _meta_graph_sites(meta_graph).items():
            for unit, roots in units.items():
                merged[op][prefix + unit] |= roots
    return merged


def _describe(unit: str, roots: Set[str]) -> str:
    """"function 'NAME' (reached from signature 'generate_ddim', ...)": signatures and the init op first."""
    if not roots:
        return f"{unit} (reached from no signature)"
    reached = sorted(roots, key=lambda root: (not root.startswith(("signature", "the init op")), root))
    more = f" and {len(reached) - 2} more" if len(reached) > 2 else ""
    return f"{unit} (reached from {', '.join(reached[:2])}{more})"


def _kind(op: str) -> str:
    if op in saved_model_ops.SAVE_OPS:
        return "checkpoint writing, which only the saver's save function may do"
    if op in saved_model_ops.RESTORE_OPS:
        return "checkpoint reading, which only the saver's restore function may do"
    for pattern, kind in _KINDS:
        if pattern.search(op):
            return kind
    return "not an op tfdiffusion's exports use"


def refused_ops(sites: Mapping[str, Mapping[str, Set[str]]]) -> Dict[str, List[str]]:
    """The ops the check refuses, each with where it is: ops outside `ALLOWED_OPS`, except `SAVE_OPS`
    in code only the save function reaches and `RESTORE_OPS` in code only the restore function reaches."""
    refused = {}
    for op, units in sorted(sites.items()):
        if op in saved_model_ops.ALLOWED_OPS:
            continue
        bad_units = {unit: roots for unit, roots in units.items()
                     if not (len(roots) == 1 and op in _SAVER_ONLY.get(next(iter(roots)), ()))}
        if bad_units:
            refused[op] = [_describe(unit, roots) for unit, roots in sorted(bad_units.items())]
    return refused


def check_saved_model_ops(path: str) -> None:
    """Refuses a SavedModel whose graph holds ops that tfdiffusion's exports never use, before running anything.

    Reads `path/saved_model.pb` and checks every op of every meta graph (main
    graph and function library) against `saved_model_ops.ALLOWED_OPS`; the
    checkpoint ops of `saved_model_ops.SAVE_OPS` and `RESTORE_OPS` are
    accepted only in the variable saver's save and restore functions
    respectively, which no request reaches. See the module docstring for
    what is and is not checked.

    Args:
        path: a SavedModel version directory.

    Raises:
        UnsafeSavedModelError: naming each refused op, what it does and the
            signature or function holding it.
        FileNotFoundError, ValueError: no readable `saved_model.pb`.
    """
    path = os.fspath(path)
    refused = refused_ops(op_sites(read_saved_model_proto(path)))
    if not refused:
        return
    listed = "; ".join(f"{op} ({_kind(op)}) in {', '.join(places[:2])}"
                       + (f" and {len(places) - 2} more" if len(places) > 2 else "")
                       for op, places in refused.items())
    raise UnsafeSavedModelError(
        f"{path!r} was not loaded: its graph holds ops that tfdiffusion's exports do not use there: {listed}. "
        "A SavedModel is a program; load it only if you trust its source "
        "(trust_graph=True, or the command line's --trust-model)", path, refused)
