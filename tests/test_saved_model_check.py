"""The SavedModel op check: every kind of export passes; graphs that touch files are refused before anything runs."""

import os
import re
import shutil

import pytest
import tensorflow as tf

import tfdiffusion
from tests import export_helpers as helpers
from tests import hostile_saved_model as hostile
from tests import saved_model_inventory as inventory
from tfdiffusion import saved_model_check
from tfdiffusion import saved_model_ops
from tfdiffusion.saved_model_check import UnsafeSavedModelError


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """kind -> version directory, one export of each kind `tests/saved_model_inventory.py` lists."""
    base = str(tmp_path_factory.mktemp("every_kind"))
    return {kind: inventory.export_kind(kind, base) for kind in inventory.KINDS}


@pytest.mark.parametrize("kind", sorted(inventory.KINDS))
def test_every_kind_of_export_passes(every_kind, kind):
    saved_model_check.check_saved_model_ops(every_kind[kind])


def test_the_shipped_saved_models_pass():
    assert inventory.SHIPPED  # saved_models/shapes/1
    for version_dir in inventory.SHIPPED:
        saved_model_check.check_saved_model_ops(version_dir)


def test_the_lists_cover_what_the_exports_use(every_kind):
    """Recomputed from the exports as the script does: a new op in an export fails here until the lists are
    regenerated (`python -m tests.saved_model_inventory`)."""
    allowed, save, restore = inventory.recompute_op_lists(list(every_kind.values()) + inventory.SHIPPED)
    assert allowed - saved_model_ops.ALLOWED_OPS == set()
    assert save - saved_model_ops.SAVE_OPS - saved_model_ops.ALLOWED_OPS == set()
    assert restore - saved_model_ops.RESTORE_OPS - saved_model_ops.ALLOWED_OPS == set()
    # The saver's ops really are in the exports, only in the saver's functions (what the check relies on).
    assert {"SaveV2", "MergeV2Checkpoints"} <= save and "RestoreV2" in restore


def test_the_lists_hold_no_op_that_touches_files_or_runs_python():
    """Among TensorFlow's registered ops, none that reads or writes files, runs Python or prints is allowed
    outside the saver, and the saver's file ops are only its checkpoint ops."""
    registered = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    risky = {name for name in registered if re.search(
        r"File(?!name)|Reader|Writer|PyFunc|Print|Summary|Dataset|Save|Restore|Checkpoint|ImmutableConst|Debug|Collective|"
        r"Rpc|Send|Recv", name)}
    assert {"ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "EagerPyFunc", "PrintV2", "SaveV2"} <= risky
    assert risky & saved_model_ops.ALLOWED_OPS == set()
    assert risky & saved_model_ops.SAVE_OPS == {"SaveV2", "MergeV2Checkpoints"}
    assert risky & saved_model_ops.RESTORE_OPS == {"RestoreV2"}
    # Every listed op is a registered TensorFlow op (no custom-op namespace).
    assert saved_model_ops.ALLOWED_OPS | saved_model_ops.SAVE_OPS | saved_model_ops.RESTORE_OPS <= registered


@pytest.fixture
def hostile_model(tmp_path):
    """`(model dir, version dir, marker, secret)`: the marker is written if anything of the graph runs."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the machine's secret")
    marker = tmp_path / "marker"
    version_dir = hostile.hostile_saved_model(tmp_path / "hostile", marker, secret)
    return tmp_path / "hostile", version_dir, marker, secret


def test_a_graph_that_writes_and_reads_files_is_refused_before_anything_runs(hostile_model):
    model_dir, version_dir, marker, _ = hostile_model
    for load in (tfdiffusion.load_saved_model, tfdiffusion.load_generator):
        with pytest.raises(UnsafeSavedModelError) as refused:
            load(str(model_dir))
        message = str(refused.value)
        assert "WriteFile (reads or writes files)" in message and "ReadFile" in message
        assert "signature 'generate_ddim'" in message and "the init op" in message
        assert "trust_graph=True" in message and "--trust-model" in message
        assert set(refused.value.ops) == {"ReadFile", "WriteFile"}
        assert not marker.exists()
    # The test can fail: trusted, loading alone runs the graph's initializer, and a request leaks the secret.
    served = tfdiffusion.load_saved_model(str(model_dir), trust_graph=True)
    assert marker.read_text() == "written when the SavedModel was loaded"
    assert served.generate(2, num_steps=1, seed=0).shape == (2, 8, 8, 3)
    assert marker.read_text() == "the machine's secret"


def test_the_command_line_refuses_it_and_trusts_it_when_asked(hostile_model, tmp_path):
    model_dir, _, marker, _ = hostile_model
    output = tmp_path / "out.npz"
    result = helpers.run_python("import sys; from tfdiffusion.cli import main; sys.exit(main(sys.argv[1:]))",
                                "sample", "--model", model_dir, "--num-images", 2, "--steps", 1, "--npz", output)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tfdiffusion: error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith("tfdiffusion: error: --model ") and "WriteFile" in errors[0], errors
    assert "--trust-model" in errors[0]
    assert not marker.exists() and not output.exists()
    trusted = helpers.run_python("import sys; from tfdiffusion.cli import main; sys.exit(main(sys.argv[1:]))",
                                 "sample", "--model", model_dir, "--num-images", 2, "--steps", 1, "--npz", output,
                                 "--trust-model")
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert marker.read_text() == "the machine's secret" and output.exists()


@pytest.mark.parametrize("op", ["SaveV2", "RestoreV2"])
def test_a_signature_calling_the_savers_own_op_is_refused(tmp_path, op):
    """The saver's save and restore functions hold SaveV2 and RestoreV2 (accepted there); a signature
    calling the same op type could write or read a checkpoint anywhere: refused, naming the signature."""
    version_dir = hostile.saver_op_saved_model(tmp_path / "model", op, tmp_path / "checkpoint")
    sites = saved_model_check.op_sites(saved_model_check.read_saved_model_proto(version_dir))
    saver = saved_model_check.SAVE if op == "SaveV2" else saved_model_check.RESTORE
    assert {saver} in sites[op].values()  # the saver has the op too
    kind = "writing, which only the saver's save" if op == "SaveV2" else "reading, which only the saver's restore"
    with pytest.raises(UnsafeSavedModelError, match=rf"{op} \(checkpoint {kind} function may do\) in function "
                                                    rf"'__inference_generate_ddim_\d+' \(reached from signature "
                                                    rf"'generate_ddim'"):
        tfdiffusion.load_saved_model(version_dir)
    assert not any(name.startswith("checkpoint") for name in os.listdir(tmp_path))


def _edited_copy(version_dir, tmp_path, edit):
    """A copy of an export whose saved_model.pb was changed by `edit(proto)`."""
    copy = str(tmp_path / "1")
    shutil.copytree(version_dir, copy)
    proto = saved_model_check.read_saved_model_proto(copy)
    edit(proto)
    with open(os.path.join(copy, "saved_model.pb"), "wb") as file:
        file.write(proto.SerializeToString())
    return copy


def test_the_restore_function_may_not_write(every_kind, tmp_path):
    """TF Serving runs the saver's restore function when it loads a model: a SaveV2 there (which would write a
    checkpoint wherever its constant path says) is refused, though SaveV2 is accepted in the save function."""
    def add_save_to_restore(proto):
        restore = next(function for function in proto.meta_graphs[0].graph_def.library.function
                       if "traced_restore" in function.signature.name)
        restore.node_def.add(name="sneaky", op="SaveV2")

    saved_model_check.check_saved_model_ops(every_kind["no-attention-network"])
    copy = _edited_copy(every_kind["no-attention-network"], tmp_path, add_save_to_restore)
    with pytest.raises(UnsafeSavedModelError, match=r"SaveV2 \(checkpoint writing.*\) in function "
                                                    r"'__inference__traced_restore_\d+' \(reached from the saver's "
                                                    r"restore function\)"):
        saved_model_check.check_saved_model_ops(copy)


def test_an_op_in_the_main_graph_reached_from_nothing_is_refused(every_kind, tmp_path):
    """A TF1-style node a session could run by name: refused even though no signature reaches it."""
    version_dir = _edited_copy(every_kind["no-attention-network"], tmp_path, lambda proto: proto.meta_graphs[
        0].graph_def.node.add(name="leak", op="WriteFile", input=["Const", "Const"]))
    with pytest.raises(UnsafeSavedModelError, match=r"WriteFile \(reads or writes files\) in the main graph "
                                                    r"\(reached from no signature\)"):
        saved_model_check.check_saved_model_ops(version_dir)


def test_a_real_export_still_loads_and_a_keras_file_is_unaffected(every_kind, tmp_path):
    served = tfdiffusion.load_saved_model(every_kind["no-attention-network"])
    assert served.generate(1, num_steps=1, seed=0).shape == (1, 8, 8, 3)
    model = helpers.tiny_model()
    model.save(tmp_path / "tiny.keras")
    assert isinstance(tfdiffusion.load_generator(str(tmp_path / "tiny.keras")), tfdiffusion.DiffusionModel)
    with pytest.raises(TypeError, match="trust_graph"):
        tfdiffusion.load_saved_model(every_kind["no-attention-network"], trust_graph="yes")


def test_not_a_saved_model_proto(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xfe not a protocol buffer")
    with pytest.raises(ValueError, match="not a SavedModel protocol buffer"):
        saved_model_check.check_saved_model_ops(str(tmp_path))
