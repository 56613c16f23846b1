"""Seed 000's debugging handles: ablation, observation, and the two callbacks built on them."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_film import list_conditioners
from lightning_film.callbacks import ConditioningAblation, ConditioningDiagnostics
from lightning_film.nn import Conditioning, Transformer
from lightning_film.nn.diagnostics import ablate_conditioning, named_conditioners, observe_conditioning, set_ablation

B, N, D, DC = 2, 3, 8, 4


def _transformer(conditioner="film", seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(dim=D, depth=2, num_heads=2, cond_dim=DC, conditioner=conditioner)


def _perturb(module: torch.nn.Module, scale: float = 0.5) -> None:
    """Give every conditioner non-trivial weights, as training would."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, cond in named_conditioners(module):
            for p in cond.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))


def _inputs(seed=2) -> tuple[torch.Tensor, Conditioning]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=gen)
    signals = [torch.randn(B, DC, generator=gen), torch.randn(B, DC, generator=gen)]
    return x, Conditioning.from_signals(signals)


# -- context managers ---------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in list_conditioners() if n != "none"])
def test_ablation_equals_the_unconditioned_model(name):
    model = _transformer(name)
    _perturb(model)
    baseline = _transformer("none")
    # The same non-conditioner weights: the "none" model's state is a subset of the other's.
    assert not baseline.load_state_dict(model.state_dict(), strict=False).missing_keys
    x, cond = _inputs()
    with torch.no_grad():
        conditioned = model(x, cond)
        with ablate_conditioning(model) as same:
            assert same is model
            ablated = model(x, cond)
        expected = baseline(x, cond)
    assert not torch.allclose(conditioned, expected, atol=1e-4), "perturbed conditioning should matter"
    torch.testing.assert_close(ablated, expected)
    assert not any(c.ablated for _, c in named_conditioners(model))


def test_observe_records_identity_at_init_for_film():
    model = _transformer("film")
    x, cond = _inputs()
    with observe_conditioning(model) as stats:
        model(x, cond)
        assert all(c.observing for _, c in named_conditioners(model))
    names = [n for n, _ in named_conditioners(model)]
    assert sorted(stats) == sorted(names) and len(names) == 5  # 2 blocks x 2 sites + final
    for values in stats.values():
        assert set(values) == {"gamma", "beta"}
        assert values["gamma"].shape == (B, 1, D)
        assert torch.equal(values["gamma"], torch.ones(B, 1, D))
        assert torch.equal(values["beta"], torch.zeros(B, 1, D))
    assert not any(c.observing or c.observed for _, c in named_conditioners(model))


def test_observe_records_the_gate_of_adaln_zero():
    model = _transformer("adaln_zero")
    x, cond = _inputs()
    with observe_conditioning(model) as stats:
        model(x, cond)
    assert set(stats["blocks.0.cond1"]) == {"gamma", "beta", "gate"}
    assert torch.equal(stats["blocks.0.cond1"]["gate"], torch.zeros(B, 1, D))
    assert "gate" not in stats["final_cond"]  # no branch to gate at the final site


def test_observing_changes_neither_outputs_nor_gradients():
    model = _transformer("film")
    _perturb(model)
    x, cond = _inputs()

    def run():
        model.zero_grad()
        out = model(x, cond)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out, grads = run()
    with observe_conditioning(model) as stats:
        out_observed, grads_observed = run()
    assert stats and all(not t.requires_grad for v in stats.values() for t in v.values())
    assert torch.equal(out, out_observed)
    assert all(torch.equal(g, h) for g, h in zip(grads, grads_observed))


def test_flags_are_restored_after_exceptions():
    model = _transformer("film")
    conds = [c for _, c in named_conditioners(model)]
    conds[0].ablated = True  # a previous state the context manager must give back, not reset
    with pytest.raises(RuntimeError, match="boom"), ablate_conditioning(model):
        assert all(c.ablated for c in conds)
        raise RuntimeError("boom")
    assert [c.ablated for c in conds] == [True] + [False] * (len(conds) - 1)
    set_ablation(model, False)
    with pytest.raises(RuntimeError, match="boom"), observe_conditioning(model):
        model(*_inputs())
        raise RuntimeError("boom")
    assert not any(c.observing or c.observed for c in conds)


def test_ablate_without_conditioners_is_an_error():
    with pytest.raises(ValueError, match="Linear contains no Conditioner"), ablate_conditioning(torch.nn.Linear(2, 2)):
        pass


# -- a tiny LightningModule, data and logger -------------------------------------------------
class TinyModule(pl.LightningModule):
    """Regress a target that depends on the conditioning; records the switches it saw."""

    def __init__(self, conditioner="film", fail_at_step: int | None = None, fail_in_test: bool = False) -> None:
        super().__init__()
        self.model = _transformer(conditioner)
        self.fail_at_step, self.fail_in_test = fail_at_step, fail_in_test
        self.seen: dict[str, list] = {"train_observing": [], "train_ablated": [], "val_ablated": [], "test_ablated": []}

    def _loss(self, batch):
        x, c, y = batch
        return torch.nn.functional.mse_loss(self.model(x, Conditioning.from_signals([c, c])), y)

    def _flags(self, attr):
        return [getattr(m, attr) for _, m in named_conditioners(self)]

    def training_step(self, batch, batch_idx):
        self.seen["train_observing"].append((self.global_step, any(self._flags("observing"))))
        self.seen["train_ablated"].append(all(self._flags("ablated")))
        if self.fail_at_step == self.global_step:
            self.model(batch[0], Conditioning(vector=batch[1]))  # observed forward, then the failure
            raise RuntimeError("step failed")
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.seen["val_ablated"].append(all(self._flags("ablated")))
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.seen["test_ablated"].append(all(self._flags("ablated")))
        if self.fail_in_test:
            raise RuntimeError("test failed")
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _loader(n=8) -> DataLoader:
    gen = torch.Generator().manual_seed(3)
    x, c = torch.randn(n, N, D, generator=gen), torch.randn(n, DC, generator=gen)
    y = x * c[:, None, :1] + c[:, None, 1:2]  # conditioning matters
    return DataLoader(TensorDataset(x, c, y), batch_size=B)


class MemoryLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def _trainer(callbacks, logger=None, **kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    return pl.Trainer(callbacks=callbacks, **{**options, **kwargs})


def _expected_keys(module, prefix, quantities=("gamma", "beta")) -> set[str]:
    keys = set()
    for name, _ in named_conditioners(module):
        for q in quantities:
            keys |= {f"{prefix}/{name}/{q}_{s}" for s in ("mean", "std", "min", "max")}
        keys.add(f"{prefix}/{name}/gamma_out_of_band")
    return keys


# -- ConditioningDiagnostics ----------------------------------------------------------------
def test_diagnostics_logs_statistics_every_n_steps_and_first_validation_batch():
    module, logger = TinyModule(), MemoryLogger()
    callback = ConditioningDiagnostics(every_n_steps=2)
    # 4 batches an epoch, validation every epoch; a sanity check that must log nothing.
    trainer = _trainer([callback], logger, max_epochs=2, limit_val_batches=2, num_sanity_val_steps=1)
    trainer.fit(module, _loader(), _loader())

    train = [(s, m) for s, m in logger.logged if any(k.startswith("cond/") for k in m)]
    val = [(s, m) for s, m in logger.logged if any(k.startswith("cond_val/") for k in m)]
    assert [s for s, _ in train] == [0, 2, 4, 6]
    assert len(val) == 2  # one per validation epoch, none from the sanity check
    assert set(train[0][1]) == _expected_keys(module, "cond")
    assert set(val[0][1]) == _expected_keys(module, "cond_val")
    first = train[0][1]  # film starts as the identity: gamma = 1, beta = 0
    assert first["cond/model.blocks.0.cond1/gamma_mean"] == 1.0
    assert first["cond/model.blocks.0.cond1/gamma_std"] == 0.0
    assert first["cond/model.final_cond/beta_max"] == 0.0
    assert first["cond/model.final_cond/gamma_out_of_band"] == 0.0
    assert callback.last_metrics == val[-1][1]
    # Observing was on for exactly the observed steps, and off afterwards.
    assert [s for s, on in module.seen["train_observing"] if on] == [0, 2, 4, 6]
    assert not any(c.observing or c.observed for _, c in named_conditioners(module))


def test_diagnostics_observes_one_batch_per_accumulated_step():
    module = TinyModule()
    callback = ConditioningDiagnostics(every_n_steps=1, on_validation=False)
    _trainer([callback], max_epochs=1, accumulate_grad_batches=2).fit(module, _loader())
    assert module.seen["train_observing"] == [(0, True), (0, False), (1, True), (1, False)]


def test_diagnostics_switches_observing_off_when_the_step_fails():
    module = TinyModule(fail_at_step=0)
    with pytest.raises(RuntimeError, match="step failed"):
        _trainer([ConditioningDiagnostics(every_n_steps=1)], max_steps=2).fit(module, _loader())
    assert module.seen["train_observing"] == [(0, True)]
    assert not any(c.observing or c.observed for _, c in named_conditioners(module))


def test_diagnostics_warns_once_per_epoch_when_gamma_leaves_the_band():
    module, logger = TinyModule(), MemoryLogger()
    with torch.no_grad():
        module.model.blocks[0].cond1.scale[-1].bias.fill_(9.0)  # gamma = 1 + 9 = 10
    callback = ConditioningDiagnostics(every_n_steps=1, on_validation=False, gamma_band=(0.2, 5.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer([callback], logger, max_epochs=2, limit_train_batches=3).fit(module, _loader())
    messages = [str(w.message) for w in caught if "ConditioningDiagnostics" in str(w.message)]
    assert len(messages) == 2, messages  # 6 observed steps over 2 epochs: one warning per epoch
    assert "'model.blocks.0.cond1'" in messages[0]
    assert "band [0.2, 5]" in messages[0]
    assert "max 10" in messages[0] and "min 10" in messages[0]
    assert all("model.blocks.0.cond1" in m for m in messages)
    step0 = logger.logged[0][1]
    assert step0["cond/model.blocks.0.cond1/gamma_out_of_band"] == 1.0
    assert step0["cond/model.blocks.0.cond2/gamma_out_of_band"] == 0.0


class FakeSummaryWriter:
    """Stands in for TensorBoard's SummaryWriter, which may not be installed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, method):
        if method.startswith("__"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.calls.append((method, args))


def _fake_tensorboard_logger(tmp_path, monkeypatch) -> tuple[TensorBoardLogger, FakeSummaryWriter]:
    # TensorBoardLogger refuses to exist without tensorboard; its writer is all we replace.
    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", True)
    logger = TensorBoardLogger(tmp_path)
    logger._experiment = writer = FakeSummaryWriter()
    return logger, writer


def test_diagnostics_sends_histograms_to_tensorboard(tmp_path, monkeypatch):
    logger, writer = _fake_tensorboard_logger(tmp_path, monkeypatch)
    module = TinyModule()
    _trainer([ConditioningDiagnostics(every_n_steps=100, on_validation=False)], logger, max_steps=1).fit(
        module, _loader()
    )
    tags = {args[0]: args for method, args in writer.calls if method == "add_histogram"}
    names = [n for n, _ in named_conditioners(module)]
    assert set(tags) == {f"cond/{n}/{q}" for n in names for q in ("gamma", "beta")}
    assert torch.equal(tags["cond/model.final_cond/gamma"][1], torch.ones(B, 1, D))
    scalars = [args[0] for method, args in writer.calls if method == "add_scalar"]
    assert "cond/model.final_cond/gamma_mean" in scalars


def test_diagnostics_without_histograms_or_logger_still_computes_metrics(tmp_path, monkeypatch):
    logger, writer = _fake_tensorboard_logger(tmp_path, monkeypatch)
    callback = ConditioningDiagnostics(histograms=False, on_validation=False)
    _trainer([callback], logger, max_steps=1).fit(TinyModule(), _loader())
    assert not any(method == "add_histogram" for method, _ in writer.calls)
    callback = ConditioningDiagnostics(on_validation=False)
    _trainer([callback], max_steps=1).fit(TinyModule(), _loader())  # logger=False
    assert callback.last_metrics["cond/model.final_cond/gamma_mean"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be an integer >= 1, got 0"),
        ({"every_n_steps": 2.5}, "every_n_steps must be an integer >= 1, got 2.5"),
        ({"every_n_steps": True}, "every_n_steps must be an integer >= 1, got True"),
        ({"gamma_band": (5.0, 0.2)}, r"low < high, got \(5.0, 0.2\)"),
        ({"gamma_band": (1.0,)}, r"two finite numbers \(low, high\).*got \(1.0,\)"),
        ({"gamma_band": "0.2,5"}, "got '0.2,5'"),
        ({"gamma_band": (0.0, float("inf"))}, r"finite.*got \(0.0, inf\)"),
        ({"histograms": "yes"}, "histograms must be a bool, got 'yes'"),
        ({"on_validation": 1}, "on_validation must be a bool, got 1"),
    ],
)
def test_diagnostics_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConditioningDiagnostics(**kwargs)


def test_diagnostics_accepts_a_list_band():
    assert ConditioningDiagnostics(gamma_band=[0.5, 2]).gamma_band == (0.5, 2.0)


class PlainModule(TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Linear(D, D)


def test_callbacks_reject_models_without_conditioners():
    match = "PlainModule contains no lightning_film Conditioner"
    with pytest.raises(ValueError, match=match):
        _trainer([ConditioningDiagnostics()], max_steps=1).fit(PlainModule(), _loader())
    with pytest.raises(ValueError, match=match):
        _trainer([ConditioningAblation()]).test(PlainModule(), _loader(), verbose=False)


# -- ConditioningAblation -------------------------------------------------------------------
def _conditioned_module(**kwargs) -> TinyModule:
    module = TinyModule(**kwargs)
    _perturb(module)
    return module


def test_ablation_callback_changes_test_metrics_and_restores_the_flags():
    module = _conditioned_module()
    conditioned = _trainer([]).test(module, _loader(), verbose=False)[0]["test_loss"]
    ablated = _trainer([ConditioningAblation()]).test(module, _loader(), verbose=False)[0]["test_loss"]
    with ablate_conditioning(module):
        by_hand = _trainer([]).test(module, _loader(), verbose=False)[0]["test_loss"]
    assert module.seen["test_ablated"] == [False] * 4 + [True] * 4 + [True] * 4
    assert abs(ablated - conditioned) > 1e-3
    assert ablated == pytest.approx(by_hand)
    assert not any(c.ablated for _, c in named_conditioners(module))


def test_ablation_callback_only_touches_its_stages():
    module = _conditioned_module()
    callback = ConditioningAblation(stages=["fit"])
    trainer = _trainer([callback], max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, _loader(), _loader())
    assert all(module.seen["train_ablated"]) and module.seen["val_ablated"] == [True]
    assert not callback.active and not any(c.ablated for _, c in named_conditioners(module))
    trainer.validate(module, _loader(), verbose=False)  # "validate" is not in stages
    trainer.test(module, _loader(), verbose=False)
    assert module.seen["val_ablated"][1:] == [False] and module.seen["test_ablated"] == [False] * 4

    # "validate" is trainer.validate(), not the validation loop inside fit.
    module = _conditioned_module()
    trainer = _trainer([ConditioningAblation(stages=["validate"])], max_epochs=1, limit_train_batches=1)
    trainer.fit(module, _loader(), _loader())
    trainer.validate(module, _loader(), verbose=False)
    assert module.seen["train_ablated"] == [False] and module.seen["val_ablated"] == [False] * 4 + [True] * 4


def test_ablation_callback_restores_the_flags_on_exceptions():
    module = _conditioned_module(fail_in_test=True)
    conds = [c for _, c in named_conditioners(module)]
    conds[-1].ablated = True  # set by the user: must survive the callback
    callback = ConditioningAblation(stages="test")
    with pytest.raises(RuntimeError, match="test failed"):
        _trainer([callback]).test(module, _loader(), verbose=False)
    assert module.seen["test_ablated"] == [True]
    assert not callback.active
    assert [c.ablated for c in conds] == [False] * (len(conds) - 1) + [True]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            ["train"],
            r"unknown stage\(s\) \['train'\] in stages=\['train'\]; accepted: \['fit', 'validate', 'test', 'predict'\]",
        ),
        (["test", "eval"], r"unknown stage\(s\) \['eval'\]"),
        ([], r"non-empty list of stage names from \['fit', 'validate', 'test', 'predict'\], got \[\]"),
        (3, "got 3"),
    ],
)
def test_ablation_callback_validates_stages(stages, message):
    with pytest.raises(ValueError, match=message):
        ConditioningAblation(stages=stages)


def test_ablation_callback_accepts_one_stage_name():
    assert ConditioningAblation(stages="predict").stages == ("predict",)
    assert ConditioningAblation(stages=["test", "test", "fit"]).stages == ("test", "fit")
