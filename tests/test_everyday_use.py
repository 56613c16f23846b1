"""Everyday use of the command, in fresh processes as a user runs it: their own conditioner by name,
no library noise on stderr, model options reachable from ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_film.cli import main
from lightning_film.quiet import LIBRARY_NOTICES, LITLOGGER_TIP

REPO = Path(__file__).resolve().parents[1]

MY_COND = '''
from pathlib import Path

from lightning_film import register_conditioner
from lightning_film.nn import ProjectedConditioner


@register_conditioner("scale_only")
class ScaleOnly(ProjectedConditioner):
    """FiLM without the shift: h * (1 + s(c))."""

    def build(self):
        self.scale = self.project(self.dim)

    def modulate(self, h, cond):
        Path("scale_only_ran").touch()  # in the working directory: proof the registered class ran
        return h * (1 + self.scale(self.signal(h, cond)))
'''

#: what the listed noise looked like (issue 15): none of it may reach a user's stderr
NOISE = ("litlogger", "tensorboardX", "LeafSpec", "might lose precision", "Warning:", LITLOGGER_TIP)


def _tiny(root: Path) -> list[str]:
    overrides = {
        "trainer.default_root_dir": root,
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "trainer.limit_predict_batches": 1,
        "trainer.enable_model_summary": "false",
        "model.dim": 16,
        "model.num_heads": 2,
        "data.seq_len": 16,
        "data.batch_size": 4,
        "data.val_windows": 8,
    }
    return ["--config", str(REPO / "configs" / "example.yaml")] + [
        a for k, v in overrides.items() for a in (f"--{k}", str(v))
    ]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lightning-film ARGS`` in a new interpreter, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_FILM_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "lightning_film.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_own_conditioner_by_name_from_the_config_in_a_fresh_process(tmp_path: Path) -> None:
    """my_cond.py beside the config, the command run from elsewhere: ``imports`` loads it before the
    registries are read, so ``conditioner: scale_only`` builds the user's class."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_cond.py").write_text(MY_COND)
    (project / "cfg.yaml").write_text("imports: [my_cond]\nmodel:\n  conditioner: scale_only\n")
    proc = _run(["fit", *_tiny(tmp_path / "run"), "--config", str(project / "cfg.yaml")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scale_only_ran").exists()


def test_own_conditioner_by_name_with_imports_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "my_cond.py").write_text(MY_COND)
    args = ["fit", *_tiny(tmp_path / "run"), "--imports", "my_cond.py", "--model.conditioner", "scale_only"]
    proc = _run(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scale_only_ran").exists()
    listed = _run(["list", "conditioners", "--imports", "my_cond"], cwd=tmp_path)
    assert "scale_only" in listed.stdout.split()


def test_unknown_name_says_how_to_import_your_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", *_tiny(tmp_path), "--model.conditioner", "scale_only"])
    assert "--imports" in capsys.readouterr().err


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_tiny(tmp_path), "--imports", "no_such_module_here"])
    assert exit_info.value.code == 2
    assert "no_such_module_here" in capsys.readouterr().err


def test_fit_test_predict_print_no_library_noise(tmp_path: Path) -> None:
    """The commands' stderr carries none of the notices a user cannot act on (the progress bar on)."""
    for command in ("fit", "test", "predict"):
        extra = [] if command == "fit" else ["--ckpt_path", "last"]
        proc = _run([command, *_tiny(tmp_path), *extra], cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
        assert not noise, f"{command}: {noise}"


def test_quiet_filters_name_one_message_each() -> None:
    """Each filter is scoped to a message and a module, never a whole category."""
    for message, category, module in LIBRARY_NOTICES:
        assert message and module and issubclass(category, Warning)


# -- model options from --help -----------------------------------------------------------------------
def _cli_classes() -> list[type]:
    """What configs pick by class_path: the models, the DataModules, our callbacks, the example."""
    import inspect as inspect_

    import lightning_film.callbacks as callbacks
    from examples.stdlib_lm import ConditionalByteLM, StdlibBytes
    from lightning_film.data.bytes import ByteDataModule
    from lightning_film.data.world import WorldDataModule
    from lightning_film.models import ByteLM, WorldModel

    ours = [getattr(callbacks, n) for n in callbacks.__all__ if inspect_.isclass(getattr(callbacks, n))]
    return [ByteLM, WorldModel, ByteDataModule, WorldDataModule, ConditionalByteLM, StdlibBytes, *ours]


@pytest.mark.parametrize("cls", _cli_classes(), ids=lambda c: c.__name__)
def test_every_argument_gets_its_own_help(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model.help CLASS`` as jsonargparse reads the docstring: every argument has a text of its
    own, and none carries a neighbour's (``dim: D. depth: blocks.`` gave depth nothing)."""
    import inspect as inspect_
    import re

    from jsonargparse import ArgumentParser

    monkeypatch.syspath_prepend(str(REPO))
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "x")
    params = [p for p in inspect_.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    helps = {a.dest[2:]: a.help or "" for a in parser._actions if a.dest.startswith("x.")}
    for name in params:
        text = helps.get(name, "")
        assert text.strip(), f"{cls.__name__}.{name} has no help"
        others = [o for o in params if o != name and re.search(rf"(^|[.;,] ){o}:", text)]
        assert not others, f"{cls.__name__}.{name}'s help documents {others} too: {text!r}"


def test_fit_help_leads_to_the_model_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    head = capsys.readouterr().out.splitlines()[:12]
    assert any("--model.help ByteLM" in line for line in head)
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "ByteLM"])
    assert "--model.net.help" in capsys.readouterr().out  # the network's options are one step further
    with pytest.raises(SystemExit):
        main(["fit", "--model", "ByteLM", "--model.net.help", "ByteNet"])
    assert "--net.depth" in capsys.readouterr().out


def test_a_misspelled_model_option_points_to_the_model_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    with pytest.raises(SystemExit):
        main(["fit", *_tiny(tmp_path), "--model.dimm", "3"])
    assert "--model.help examples.stdlib_lm.ConditionalByteLM" in capsys.readouterr().err
