"""Paths compared as the file system sees them (`tfdiffusion.paths`), and atomic writes through odd spellings."""

import os

import pytest

from tfdiffusion import files
from tfdiffusion import paths


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """data/{a,b}, a link to data, a link to data/a, and an outside folder; the current directory is the root."""
    for name in ("data/a", "data/b", "outside"):
        os.makedirs(tmp_path / name)
    os.symlink(tmp_path / "data", tmp_path / "data-link")
    os.symlink(tmp_path / "data" / "a", tmp_path / "a-link")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("path, folder, inside", [
    ("data/a", "data", True),
    ("data", "data", True),                         # the same folder counts
    ("data-link/new/run", "data", True),            # not yet made, under a link
    ("a-link/../r", "data", True),                  # `..` goes up from the link's target, not from the link
    ("a-link/../r", ".", True),
    ("{root}/data/b/../a", "data", True),           # absolute against relative
    ("outside", "data", False),
    ("data-linked", "data", False),                 # a prefix of the name is not inside
    ("{root}", "data", False),                      # an ancestor is not inside
    ("data", "{root}", True),
])
def test_is_inside_under_any_spelling(tree, path, folder, inside):
    assert paths.is_inside(path.format(root=tree), folder.format(root=tree)) is inside


def test_real_path_resolves_links_before_dot_dot(tree):
    assert paths.real_path("a-link/../r") == str(tree / "data" / "r")
    assert os.path.abspath("a-link/../r") == str(tree / "r")  # what a textual normalisation gives
    assert paths.real_path("gs://bucket/x/../y") == "gs://bucket/x/../y"  # URLs as written


def test_reachable_folders_follow_links_once_and_skip_hidden_folders(tree):
    os.symlink(tree / "outside", tree / "data" / "a" / "more")
    os.symlink(tree / "data", tree / "data" / "b" / "loop")  # a loop: followed once
    os.makedirs(tree / "data" / ".hidden")
    os.symlink(tree / "elsewhere-hidden", tree / "data" / ".hidden" / "x")
    os.makedirs(tree / "elsewhere-hidden")
    found = paths.reachable_folders("data-link")
    assert found == [str(tree / "data"), str(tree / "outside")]


def test_check_apart_refuses_both_directions_and_names_both_arguments(tree):
    with pytest.raises(ValueError) as info:
        paths.check_apart("data-link/run", "output_dir", "data", "dataset", "they would mix")
    message = str(info.value)
    assert "`output_dir` 'data-link/run'" in message and "`dataset` 'data'" in message
    assert str(tree / "data" / "run") in message and "they would mix" in message
    with pytest.raises(ValueError, match="`dataset` 'data/a' is inside `output_dir` '.'"):
        paths.check_apart(".", "output_dir", "data/a", "dataset", "they would mix")
    os.symlink(tree / "outside", tree / "data" / "more")
    with pytest.raises(ValueError, match="where a link inside `dataset` 'data' leads"):
        paths.check_apart("outside/run", "output_dir", "data", "dataset", "they would mix",
                          inputs=paths.reachable_folders("data"))
    paths.check_apart("outside/run", "output_dir", "data", "dataset", "they would mix")  # links not given: apart


def test_check_writable_asks_the_file_system(tree):
    paths.check_writable("outside/new/deeper/file.png", "output")  # the nearest existing folder takes files
    paths.check_writable("outside", "output")
    assert sorted(os.listdir(tree / "outside")) == []  # the probe is gone
    with pytest.raises(ValueError, match="cannot write `output` '/proc/x.png'"):
        paths.check_writable("/proc/x.png", "output")  # root may write anywhere by mode bits, not here
    (tree / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        paths.check_writable("file/x.png", "npz")


def test_atomic_output_renames_within_the_folder_the_path_names(tree):
    with files.atomic_output("a-link/../grid.txt") as tmp:
        assert os.path.dirname(tmp) == str(tree / "data")
        with open(tmp, "w") as file:
            file.write("x")
    assert (tree / "data" / "grid.txt").read_text() == "x" and not (tree / "grid.txt").exists()
