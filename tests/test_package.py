"""The package as a whole: its public names, what `import tfdiffusion` pulls in."""

import subprocess
import sys

import tfdiffusion


def test_every_public_name_exists():
    for name in tfdiffusion.__all__:
        assert hasattr(tfdiffusion, name), name
    assert len(set(tfdiffusion.__all__)) == len(tfdiffusion.__all__)


def test_importing_the_package_does_not_import_the_command_line():
    code = ("import sys, tfdiffusion; "
            "print(sorted(m for m in sys.modules if m.startswith('tfdiffusion.cli') or m == 'tfdiffusion.console'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
