"""A third-party package adds a conditioner through the ``lightning_film.conditioners`` entry point.

The plugin is a throwaway package built and installed with pip into a temporary directory;
every check runs in a fresh interpreter with that directory on PYTHONPATH, so the
entry-point scan sees it and nothing leaks into this test process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None,
    reason="needs pip and setuptools to build and install the throwaway plugin package",
)

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "myplug-pkg"
version = "0.0.1"

[project.entry-points."lightning_film.conditioners"]
myplug = "myplug_pkg:MyPlugConditioner"

[tool.setuptools]
py-modules = ["myplug_pkg"]
"""

PLUGIN = '''
"""A plugin conditioner: a shift-only FiLM, zero (so the identity) at init."""
import torch
from torch import nn

from lightning_film import Conditioner


class MyPlugConditioner(Conditioner):
    """Plugin shift: h + W c, from an installed package."""

    def __init__(self, dim: int, cond_dim: int, site: str = "attn") -> None:
        super().__init__(dim, cond_dim, site)
        self.shift = nn.Linear(cond_dim, dim)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)

    def modulate(self, h: torch.Tensor, cond) -> torch.Tensor:
        return h + self.shift(self.signal(h, cond))
'''

CHECK = """
import sys
import torch
import lightning_film
from lightning_film import Conditioning, Transformer, build_conditioner, list_conditioners

assert "myplug_pkg" not in sys.modules, "import lightning_film must not load plugins"
build_conditioner("film", dim=8, cond_dim=4)
assert "myplug_pkg" not in sys.modules, "a lookup of a built-in name loaded the plugin"

cond = build_conditioner("myplug", dim=8, cond_dim=4)
assert "myplug_pkg" in sys.modules and type(cond).__name__ == "MyPlugConditioner"
assert "myplug" in list_conditioners()

torch.manual_seed(0)
model = Transformer(dim=8, depth=2, num_heads=2, cond_dim=4, conditioner="myplug", causal=True)
x, c = torch.randn(2, 5, 8), torch.randn(2, 4)
y = model(x, Conditioning(vector=c))
assert y.shape == (2, 5, 8)
y.sum().backward()
print("plugin ok")
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed plugin (its module and its dist-info)."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "myplug_pkg_src"
    package.mkdir()
    (package / "pyproject.toml").write_text(PYPROJECT)
    (package / "myplug_pkg.py").write_text(PLUGIN)
    site = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(package),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "myplug_pkg.py").is_file()
    return site


def _run(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_FILM_DEBUG"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_plugin_is_found_lazily_and_trains(plugin_site: Path, tmp_path: Path) -> None:
    proc = _run(plugin_site, ["-c", textwrap.dedent(CHECK)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "plugin ok" in proc.stdout


def test_plugin_shows_in_cli_list(plugin_site: Path, tmp_path: Path) -> None:
    proc = _run(plugin_site, ["-m", "lightning_film.cli", "list", "conditioners"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:1] == ["myplug"] and "from an installed package" in line for line in lines)
