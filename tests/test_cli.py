"""The ``lightning-film`` command, run in-process through ``main([...])`` on the example job."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from lightning_film import list_conditioners, list_normalizers
from lightning_film.cli import EXTRA_COMMANDS, main, registries
from lightning_film.registry import CONDITIONERS, NORMALIZERS, RegistryError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples`` is imported from the repository, as it is when the CLI runs from there."""
    monkeypatch.syspath_prepend(str(REPO))


def _fail(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI expecting a user error; return its stderr after checking its form."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("lightning-film: error:")] == [
        err.strip().splitlines()[-1]
    ]
    return err


def _last_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


# -- list and --help ---------------------------------------------------------------------------
def test_list_prints_every_registered_name_with_its_doc(capsys: pytest.CaptureFixture[str]) -> None:
    main(["list"])
    lines = capsys.readouterr().out.splitlines()
    found = registries()
    assert NORMALIZERS in found and CONDITIONERS in found
    for registry in found:  # later registries are checked without touching this test
        assert any(line.startswith(f"{registry.plural} (") for line in lines)
        for entry in registry.entries():
            assert any(line.split()[:1] == [entry.name] and entry.doc in line for line in lines), entry.name
    assert set(list_normalizers() + list_conditioners()) <= {line.split()[0] for line in lines if line}


def test_list_shows_a_registry_declared_outside_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_film.registry import Registry

    gadgets = Registry("gadget")  # as a plugin package would declare one
    gadgets.add("sprocket", dict, doc="turns things")
    main(["list", "gadgets"])
    assert capsys.readouterr().out.splitlines() == ["gadgets:", "  sprocket  turns things"]
    del gadgets
    import gc

    gc.collect()
    assert "gadgets" not in {r.plural for r in registries()}  # gone with its last reference


def test_list_one_kind_and_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    main(["list", "normalizers"])
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert names == set(list_normalizers())
    err = _fail(["list", "nibbles?"], capsys)
    assert "nibbles?" in err and "conditioners" in err


def test_help_shows_trainer_and_extra_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lightning-film")
    for command in ("fit", "validate", "test", "predict"):
        assert f"\n    {command} " in out
    for name, (help_, _) in EXTRA_COMMANDS.items():
        assert any(line.split()[:1] == [name] and help_ in line for line in out.splitlines()), name


# -- the example job ---------------------------------------------------------------------------
def test_fit_writes_last_ckpt_and_resume_continues(tiny_cli_args: list[str], tmp_path: Path) -> None:
    main(["fit", *tiny_cli_args])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and _last_step(last) == 2

    main(["fit", *tiny_cli_args, "--ckpt_path", "last", "--trainer.max_steps", "4"])
    assert _last_step(last) == 4
    # The resumed run (logger version_1) trained steps 2 and 3 only: it did not start over.
    with open(tmp_path / "lightning_logs" / "version_1" / "metrics.csv") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}
    assert steps == {2, 3}


def test_validate_test_predict_run_on_a_checkpoint(
    tiny_cli_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["fit", *tiny_cli_args])
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    main(["validate", *tiny_cli_args, "--ckpt_path", ckpt])
    main(["test", *tiny_cli_args, "--ckpt_path", ckpt])
    main(["predict", *tiny_cli_args, "--ckpt_path", ckpt])
    out = capsys.readouterr().out
    assert "val/bpb" in out and "test/bpb" in out and "test/bpb_other_class" in out


# -- the precision an unset trainer.precision gets ----------------------------------------------
@pytest.mark.parametrize(
    ("units", "given", "expected"),
    [
        ("AVX512-BF16", [], "bf16-mixed"),
        ("AVX512-BF16", ["--trainer.precision", "32-true"], "32-true"),
        (None, [], "32-true"),
    ],
)
def test_unset_precision_is_bf16_mixed_only_where_the_cpu_has_bf16_units(
    tiny_cli_args: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, units, given, expected
) -> None:
    from lightning_film import precision
    from lightning_film.cli import run_lightning_cli

    monkeypatch.setattr(precision, "_cpu_bf16_units", lambda: units)
    with caplog.at_level("INFO"):
        cli = run_lightning_cli(["fit", *tiny_cli_args, "--trainer.max_steps", "1", *given])
    assert cli.trainer.precision == expected
    said = [r.getMessage() for r in caplog.records if "trainer.precision" in r.getMessage()]
    assert said == (
        [
            "lightning-film: trainer.precision bf16-mixed: this chip has AVX512-BF16 "
            "(--trainer.precision 32-true turns it off)"
        ]
        if expected == "bf16-mixed" and not given
        else []
    )
    saved = next(tmp for tmp in Path(cli.trainer.log_dir).glob("config.yaml"))
    assert f"precision: {expected}" in saved.read_text()  # the run's config.yaml says what it ran with


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [("auto", False, "cpu"), ("cpu", True, "cpu"), ("auto", True, "cuda"), ("gpu", True, "cuda"), ("tpu", False, None)],
)
def test_bf16_units_are_looked_for_on_the_chip_the_run_will_use(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, cuda: bool, expected: str | None
) -> None:
    from lightning_film import precision

    monkeypatch.setattr(precision, "_cpu_bf16_units", lambda: "cpu")
    monkeypatch.setattr(precision, "_cuda_bf16_units", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert precision.bf16_units(accelerator) == expected
    assert precision.default_precision(accelerator)[0] == ("32-true" if expected is None else "bf16-mixed")
    assert precision.bf16_units(object()) is None  # an Accelerator instance: not ours to guess


# -- errors --------------------------------------------------------------------------------------
def test_unknown_conditioner_is_one_message(tiny_cli_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["fit", *tiny_cli_args, "--model.conditioner", "flim"], capsys)
    line = err.strip().splitlines()[-1]
    assert "'flim'" in line and "did you mean 'film'" in line
    assert all(name in line for name in list_conditioners())


def test_debug_env_shows_the_real_error(tiny_cli_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_DEBUG", "1")
    with pytest.raises(Exception) as info:
        main(["fit", *tiny_cli_args, "--model.conditioner", "flim"])
    chain, err = [], info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    assert any(isinstance(e, RegistryError) for e in chain)


def test_bad_value_from_our_constructor_is_one_message(
    tiny_cli_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fail(["fit", *tiny_cli_args, "--data.packages", "[asyncio, no_such_pkg]"], capsys)
    assert "no_such_pkg" in err and "asyncio" in err and "json" in err  # names the bad one and the choices


def test_misspelled_key_names_it_without_the_usage_dump(
    tiny_cli_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_cli_args, "--model.dimm", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'dimm' is not accepted" in err and "Traceback" not in err
    assert "usage:" not in err and "--trainer.accelerator" not in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in err and "does not exist" in err


def test_console_script_from_repo_root_is_clean(tmp_path: Path) -> None:
    """A real process: the script's own bin/ is sys.path[0], yet ``examples`` resolves from the
    working directory, and an unknown name still ends as one line on stderr."""
    script = shutil.which("lightning-film")
    cmd = [script] if script else [sys.executable, "-m", "lightning_film.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIGHTNING_FILM_DEBUG")}
    args = [
        "fit",
        "--config",
        "configs/example.yaml",
        "--model.conditioner",
        "flim",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("lightning-film: error: unknown conditioner 'flim'")


# -- the working directory is importable -----------------------------------------------------------
USER_MODULE = '''
"""A user's own model and conditioner, in the directory the command runs from."""
from pathlib import Path

from examples.stdlib_lm import ConditionalByteLM
from lightning_film.nn import FiLM


class UserLM(ConditionalByteLM):
    def on_fit_start(self) -> None:
        Path("user_model_ran").write_text(type(self.transformer.final_cond).__name__)


class UserFiLM(FiLM):
    """FiLM under another name."""
'''


def test_user_module_in_working_dir(tiny_cli_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"user_mod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    main(["fit", *tiny_cli_args, "--model", f"{name}.UserLM", "--model.conditioner", f"{name}:UserFiLM"])
    assert (tmp_path / "user_model_ran").read_text() == "UserFiLM"
    assert str(tmp_path) not in sys.path  # main() leaves sys.path as it found it


# -- the example itself ----------------------------------------------------------------------------
@pytest.mark.parametrize("conditioner", list_conditioners())
def test_example_model_trains_with_every_conditioner(conditioner: str) -> None:
    from examples.stdlib_lm import ConditionalByteLM

    torch.manual_seed(0)
    model = ConditionalByteLM(dim=16, num_heads=2, seq_len=8, num_classes=3, conditioner=conditioner)
    x, c = torch.randint(0, 256, (2, 8)), torch.tensor([0, 2])
    bpb = model.bits_per_byte((x, x.roll(-1, 1), c))  # (B,)
    assert bpb.shape == (2,) and torch.isfinite(bpb).all()
    bpb.mean().backward()


def test_example_data_split_is_disjoint_and_stable() -> None:
    from examples.stdlib_lm import DEFAULT_PACKAGES, StdlibBytes, split_files

    for package in DEFAULT_PACKAGES:
        split = split_files(package)
        assert all(split.values()) and split == split_files(package)
        files = [f for fs in split.values() for f in fs]
        assert len(files) == len(set(files))
    data = StdlibBytes(seq_len=16, batch_size=4, val_windows=16)
    data.setup()
    x, y, c = next(iter(data.val_dataloader()))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1]) and c.shape == (4,)
    assert next(iter(data.val_dataloader()))[0].equal(x)  # fixed validation windows


def test_example_data_rejects_unknown_package() -> None:
    from examples.stdlib_lm import StdlibBytes

    with pytest.raises(ValueError, match=r"unknown: \['nope'\].*asyncio"):
        StdlibBytes(packages=["nope"])


def test_custom_conditioner_example_runs() -> None:
    """In its own process: registering ``lowrank_film`` here would leak into other tests."""
    script = REPO / "examples" / "custom_conditioner.py"
    args = ["--steps", "2", "--dim", "16", "--seq-len", "16"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lowrank_film: val/bpb" in proc.stdout


def test_our_callbacks_by_short_name_from_the_command_line(tiny_cli_args: list[str], tmp_path: Path) -> None:
    """Configs name our callbacks by class name; diagnostics log per-layer gamma to the CSV logger."""
    main(
        [
            "fit",
            *tiny_cli_args,
            "--trainer.callbacks+=ConditioningDiagnostics",
            "--trainer.callbacks.every_n_steps=1",
            "--trainer.callbacks+=ConditioningAblation",
            "--trainer.callbacks.stages=[test]",
        ]
    )
    metrics = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0]
    assert "cond/transformer.blocks.0.cond1/gamma_mean" in metrics
