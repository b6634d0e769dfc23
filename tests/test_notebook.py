"""examples/colab_tpu.ipynb runs unchanged on this CPU (its tiny configuration) through a real Jupyter kernel."""

import ast
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "examples" / "colab_tpu.ipynb"


def test_colab_tpu_notebook_runs_on_a_cpu(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    env_keys = ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR")
    saved = {key: os.environ.pop(key) for key in env_keys if key in os.environ}
    try:
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.update(saved)
    text = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", []))
    assert "Strategy: one device" in text
    assert "policy mixed_bfloat16" in text
    assert "final loss" in text
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert (tmp_path / "exported" / "diffusion" / "1" / "saved_model.pb").exists()


# ------------------------------------------------------------ installing
# issue 23: the name "tfdiffusion" on the package index is not this project's, so no cell may install anything
# by bare name: only URLs (git+https://...), paths, or `-e PATH`.
_PIP_OPTIONS_WITH_VALUES = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                            "-t", "--target", "--prefix", "--root", "--src", "--platform", "--python-version",
                            "--implementation", "--abi", "--progress-bar", "--log", "--cache-dir", "--timeout",
                            "--retries", "--proxy", "--trusted-host", "--global-option", "--config-settings",
                            "-C"}
# The one function allowed to compute what is installed; test_install_cell_installs_only_the_projects_source
# runs it.
_SOURCE_FUNCTION = "tfdiffusion_source"


def _is_source(target):
    """A URL (git+https://..., https://..., file://...) or a path (absolute, ./, ../, ~, or with a separator)."""
    return bool(re.match(r"^(git\+)?[a-z][a-z0-9+.-]*://", target)) or target.startswith(
        ("/", "./", "../", "~", ".")) or os.sep in target


def _bare_names(arguments):
    """The `pip install` targets in `arguments` (the words after "install") that are not URLs or paths;
    None stands for a computed target."""
    bad, words = [], list(arguments)
    while words:
        word = words.pop(0)
        if word in ("-r", "--requirement"):  # a file of names: nothing shows what it installs
            bad.append(f"{word} {words.pop(0) if words else ''}".strip())
        elif word in ("-e", "--editable"):
            target = words.pop(0) if words else ""
            if not isinstance(target, str) or not _is_source(target):
                bad.append(f"-e {target}")
        elif isinstance(word, str) and word.startswith("-"):
            if word in _PIP_OPTIONS_WITH_VALUES and words:
                words.pop(0)
        elif not isinstance(word, str) or not _is_source(word):
            bad.append(word)
    return bad


# A command line that runs pip: "pip install ...", "python3 -m pip install ...", after "!" or "%" in a cell, or
# in a string given to os.system / subprocess (also after "&&" or ";").
_PIP_COMMAND = re.compile(r"(?:^|&&|;|\|\|)\s*[!%]?\s*(?:\S*python[\d.]*\s+-m\s+)?pip3?\s+install\b([^;&|\n]*)",
                          re.M)


def _shell_installs(text):
    """The words after "install" of every pip command in a shell line or a string."""
    return [shlex.split(match.group(1)) for match in _PIP_COMMAND.finditer(text)]


def _resolve(node, constants):
    """A list element as a string, None if computed by `tfdiffusion_source(...)`, else a marker naming it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == _SOURCE_FUNCTION:
        return "/computed-by-tfdiffusion_source"
    return f"<computed: {ast.unparse(node)}>"


def bare_name_installs(notebook):
    """`(cell index, target)` for every install by bare name in the notebook's code cells."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        python_lines = []
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("!", "%")):  # shell escapes and magics (%pip install ...)
                found += [(index, target) for words in _shell_installs(line) for target in _bare_names(words)]
                python_lines.append("pass")
            else:
                python_lines.append(line)
        tree = ast.parse("\n".join(python_lines))
        constants = {target.id: node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                     for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "pip install x" in a string
                found += [(index, target) for words in _shell_installs(node.value) for target in _bare_names(words)]
            if isinstance(node, (ast.List, ast.Tuple)):  # ["pip", "install", ...] argument lists
                words = [_resolve(element, constants) for element in node.elts]
                if "pip" in words and "install" in words[words.index("pip"):]:
                    found += [(index, target) for target in _bare_names(words[words.index("install") + 1:])]
    return found


def test_no_cell_installs_anything_by_bare_name():
    assert bare_name_installs(nbformat.read(NOTEBOOK, as_version=4)) == []


@pytest.mark.parametrize("source, bad", [
    ('subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "tfdiffusion"])', ["tfdiffusion"]),
    ('!pip install -q tfdiffusion[onnx]', ["tfdiffusion[onnx]"]),
    ('%pip install -U git+https://example.com/tfdiffusion.git numpy', ["numpy"]),
    ('os.system("pip install tfdiffusion")', ["tfdiffusion"]),
    ('os.system("cd /tmp && python3 -m pip install -q tfdiffusion")', ["tfdiffusion"]),
    ('"""Installs with `pip install`: a URL or a path."""', []),
    ('NAME = "tfdiffusion"\nsubprocess.run(["pip", "install", NAME])', ["tfdiffusion"]),
    ('subprocess.run(["pip", "install", package_name()])', ["<computed: package_name()>"]),
    ('!pip install -r requirements.txt', ["-r requirements.txt"]),
    ('!pip install -e tfdiffusion', ["-e tfdiffusion"]),
    ('!pip install -q -e . "git+https://example.com/x.git" /content/tfdiffusion ../checkout', []),
    ('!pip install --index-url https://example.com/simple ./wheels/tfdiffusion-0.1.whl', []),
    ('subprocess.check_call([sys.executable, "-m", "pip", "install", tfdiffusion_source(SOURCE)])', []),
])
def test_the_bare_name_check_can_fail(source, bad):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    assert [target for _, target in bare_name_installs(notebook)] == bad


def _install_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


def _run_install_cell(monkeypatch, cwd, source):
    """Runs the notebook's install cell as in a runtime without tfdiffusion; returns the pip commands run."""
    calls = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tfdiffusion" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "check_call", lambda command, *a, **k: calls.append(list(command)))
    if source is None:
        monkeypatch.delenv("TFDIFFUSION_SOURCE", raising=False)
    else:
        monkeypatch.setenv("TFDIFFUSION_SOURCE", source)
    monkeypatch.chdir(cwd)
    exec(compile(_install_cell(), "install-cell", "exec"), {})
    return calls


def test_install_cell_installs_only_the_projects_source(monkeypatch, tmp_path):
    repo = NOTEBOOK.parent.parent
    url = "git+https://example.com/someone/tfdiffusion.git@v0.1.0"
    assert _run_install_cell(monkeypatch, tmp_path, url)[-1][-1] == url
    # Unset, from the checkout's examples/: that checkout, by absolute path.
    assert _run_install_cell(monkeypatch, repo / "examples", None)[-1][-1] == str(repo)
    assert _run_install_cell(monkeypatch, tmp_path, str(repo))[-1][-1] == str(repo)
    for command in (_run_install_cell(monkeypatch, tmp_path, url),
                    _run_install_cell(monkeypatch, repo / "examples", "..")):
        assert command[0][:4] == [sys.executable, "-m", "pip", "install"] and not _bare_names(command[0][4:])
    # Unset outside a checkout, or a bare name (even one that is also a folder here): refused, nothing run.
    (tmp_path / "tfdiffusion").mkdir()
    for source, fragment in ((None, "TFDIFFUSION_SOURCE is not set"), ("tfdiffusion", "not a package name"),
                             ("tfdiffusion[onnx]", "not a package name")):
        calls = []
        with pytest.raises(RuntimeError, match=re.escape(fragment)):
            calls = _run_install_cell(monkeypatch, tmp_path, source)
        assert calls == []
