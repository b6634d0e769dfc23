"""XLA's persistent compilation cache: kept across processes, keyed by the program, on by default in the CLI."""

import argparse
import glob
import os
import platform
import subprocess
import sys

import pytest

from tfdiffusion import compilation_cache
from tfdiffusion import enable_compilation_cache
from tfdiffusion import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
import sys
import numpy as np
import tensorflow as tf
import tfdiffusion

tfdiffusion.enable_compilation_cache(sys.argv[1])
size = int(sys.argv[2])

@tf.function(jit_compile=True)
def program(x):
    for _ in range(3):
        x = tf.tanh(tf.matmul(x, x) / size)
    return x

x = tf.reshape(tf.range(size * size, dtype=tf.float32), (size, size)) / (size * size)
np.save(sys.argv[3], program(x).numpy())
"""


def _entries(folder):
    return sorted(glob.glob(os.path.join(folder, "*XLA_CPU_JIT*")))


def _run_program(folder, size, out):
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}  # not the session's cache
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"  # keep TensorFlow's errors: loading an entry logs a parse attempt
    result = subprocess.run([sys.executable, "-c", PROGRAM, str(folder), str(size), str(out)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_a_second_process_loads_the_program_a_first_one_compiled(tmp_path):
    import numpy as np

    folder = tmp_path / "cache"
    first_log = _run_program(folder, 8, tmp_path / "first.npy")
    entries = _entries(folder)
    assert len(entries) == 1, os.listdir(folder)
    assert "XlaSerializedCacheEntry" not in first_log  # nothing to load yet
    stamp = os.stat(entries[0]).st_mtime_ns

    second_log = _run_program(folder, 8, tmp_path / "second.npy")
    assert _entries(folder) == entries and os.stat(entries[0]).st_mtime_ns == stamp  # found, not rewritten
    assert "XlaSerializedCacheEntry" in second_log  # TensorFlow read the stored entry
    np.testing.assert_array_equal(np.load(tmp_path / "second.npy"), np.load(tmp_path / "first.npy"))

    _run_program(folder, 16, tmp_path / "other.npy")  # another shape is another program
    assert len(_entries(folder)) == 2


def test_default_folder_and_the_flag_it_sets(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.delenv("TFDIFFUSION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.default_cache_directory() == str(tmp_path / "xdg" / "tfdiffusion" / "xla")
    monkeypatch.setenv("TFDIFFUSION_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    path = enable_compilation_cache()
    assert path == str(tmp_path / "mine") and os.path.isdir(path)
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={path}"
    assert compilation_cache.cache_directory_in_use() == path
    assert enable_compilation_cache() == path  # kept, not added twice
    assert enable_compilation_cache(path) == path
    assert os.environ["TF_XLA_FLAGS"].count("persistent_cache_directory") == 1


@pytest.mark.parametrize("directory, error, words", [
    (True, TypeError, ["folder path", "bool"]),
    (3, TypeError, ["folder path", "int"]),
    ("", ValueError, ["empty"]),
    ("with space", ValueError, ["whitespace"]),
])
def test_bad_directories(directory, error, words, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        enable_compilation_cache(directory)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "TF_XLA_FLAGS" not in os.environ and os.listdir(tmp_path) == []


def test_a_file_or_another_folder_in_the_flags_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        enable_compilation_cache(tmp_path / "file")
    monkeypatch.setenv("TF_XLA_FLAGS", f"--tf_xla_persistent_cache_directory={tmp_path / 'theirs'}")
    with pytest.raises(ValueError, match="already sets the XLA cache folder"):
        enable_compilation_cache(tmp_path / "mine")
    assert not (tmp_path / "mine").exists()


def _args(**kwargs):
    return argparse.Namespace(**{"compilation_cache": None, "no_compilation_cache": False, **kwargs})


def test_cli_turns_the_cache_on_unless_told_not_to(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.delenv("TFDIFFUSION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cli._use_compilation_cache(_args(no_compilation_cache=True))
    assert "TF_XLA_FLAGS" not in os.environ and not (tmp_path / "xdg").exists()
    cli._use_compilation_cache(argparse.Namespace())  # a command that compiles nothing (convert)
    assert "TF_XLA_FLAGS" not in os.environ
    cli._use_compilation_cache(_args())
    assert compilation_cache.cache_directory_in_use() == str(tmp_path / "xdg" / "tfdiffusion" / "xla")
    # An unusable default folder is skipped with a note; the run goes on.
    monkeypatch.delenv("TF_XLA_FLAGS")
    (tmp_path / "blocked").write_text("x")
    monkeypatch.setenv("TFDIFFUSION_CACHE_DIR", str(tmp_path / "blocked"))
    cli._use_compilation_cache(_args())
    assert "TF_XLA_FLAGS" not in os.environ
    assert "XLA compilation cache off" in capsys.readouterr().err


def test_cli_flags_and_a_bad_cache_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    parser = cli.build_parser()
    for command in (["train", "--output-dir", "r"], ["sample", "--model", "m.keras"], ["evaluate", "--model", "m.keras", "--dataset", "shapes"]):
        args = parser.parse_args(command + ["--compilation-cache", "c"])
        assert args.compilation_cache == "c" and not args.no_compilation_cache
        assert parser.parse_args(command + ["--no-compilation-cache"]).no_compilation_cache
    (tmp_path / "file").write_text("x")
    code = cli.main(["sample", "--model", str(tmp_path / "m.keras"), "--output", str(tmp_path / "g.png"),
                     "--compilation-cache", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_onednn_kernels_on_when_tfdiffusion_comes_first():
    code = ("import tfdiffusion, tensorflow\nfrom tensorflow.python.util import _pywrap_util_port as p\n"
            "print(p.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                       cwd=REPO, env={**env, **extra}, timeout=300).stdout.split()[-1]
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert run({}) == ("True" if x86 else run({"TF_ENABLE_ONEDNN_OPTS": ""}))
    assert run({"TF_ENABLE_ONEDNN_OPTS": "0"}) == "False"  # the user's choice stands


def test_low_memory_xla_scheduler_is_set_and_accepted_by_xla():
    from tfdiffusion.runtime_defaults import LOW_MEMORY_SCHEDULER_FLAG

    # Imports tfdiffusion, then compiles and runs an XLA program: XLA aborts on a flag it does not know.
    code = ("import os, tfdiffusion, tensorflow as tf\n"
            "f = tf.function(lambda x: 2.0 * x + 1.0, jit_compile=True)\n"
            "print(float(f(tf.constant(3.0))))\nprint(os.environ.get('XLA_FLAGS', ''))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def run(extra):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                              env={**env, **extra}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        value, flags = done.stdout.splitlines()[-2:]
        assert float(value) == 7.0
        return flags

    assert run({}) == LOW_MEMORY_SCHEDULER_FLAG
    other = "--xla_cpu_enable_fast_math=false"
    assert run({"XLA_FLAGS": other}) == f"{other} {LOW_MEMORY_SCHEDULER_FLAG}"
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    assert run({"XLA_FLAGS": mine}) == mine  # the user's choice stands


def test_low_memory_xla_scheduler_is_left_out_for_tensorflow_releases_not_known_to_have_it(monkeypatch):
    from tfdiffusion import runtime_defaults

    # XLA aborts a process on a flag it does not know: a release whose XLA may lack it gets nothing.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    monkeypatch.setattr(runtime_defaults, "_tensorflow_release", lambda: (2, 99))
    runtime_defaults.apply_runtime_defaults()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.setattr(runtime_defaults, "_tensorflow_release", lambda: None)  # release unknown
    runtime_defaults.apply_runtime_defaults()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.setattr(runtime_defaults, "_tensorflow_release", lambda: (2, 21))
    runtime_defaults.apply_runtime_defaults()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false " + runtime_defaults.LOW_MEMORY_SCHEDULER_FLAG
