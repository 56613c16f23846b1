"""``TorchCompile``: switch ``torch.compile`` on from a config, for any model with a transformer.

```yaml
trainer:
  callbacks:
    - class_path: lightning_film.callbacks.compile.TorchCompile
      init_args: {mode: default}          # or max-autotune-no-cudagraphs, ...; modules: [transformer]
```

Why a callback and not a model argument: it works for every LightningModule holding the
submodules it names (``ByteLM``, ``WorldModel``, a user's model) without a flag in each; it is
switched per run (``--trainer.callbacks+=...``) and leaves hyperparameters and checkpoints
untouched: modules are compiled *in place* (``nn.Module.compile``), so parameter names keep no
``_orig_mod.`` prefix and a checkpoint loads with or without it.

Compiled in the stages named by ``stages`` (``fit``, ``validate``, ``test`` by default), restored
to eager at their ``teardown``. ``predict`` is left out by default: sampling with a key/value
cache feeds one token at a time with a growing cache, which would recompile at every length.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

__all__ = ["TorchCompile"]

STAGES = ("fit", "validate", "test", "predict")
MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TorchCompile(Callback):
    """``torch.compile`` the named submodules of the LightningModule (in place) in ``setup``.

    Args:
        modules: attribute paths of the submodules to compile (``"transformer"``,
            ``"net.transformer.blocks.0"``, ...); ``""`` is the whole LightningModule. Default: the
            model's transformer (``transformer``, or ``net.transformer`` for a model that wraps
            its network as ``net``, as ByteLM and WorldModel do).
        mode: ``torch.compile``'s mode (``"default"``, ``"reduce-overhead"``, ``"max-autotune"``).
        fullgraph: ``torch.compile``'s fullgraph: fail on a graph break instead of splitting.
        dynamic: ``torch.compile``'s dynamic shapes (``None``: decided by torch).
        backend: ``torch.compile``'s backend.
        stages: the stages during which the modules run compiled.
    """

    def __init__(
        self,
        modules: list[str] | None = None,
        mode: str | None = None,
        fullgraph: bool = False,
        dynamic: bool | None = None,
        backend: str = "inductor",
        stages: list[str] | None = None,
    ) -> None:
        super().__init__()
        self._default = modules is None
        modules = ["transformer"] if modules is None else modules
        stages = ["fit", "validate", "test"] if stages is None else stages
        if isinstance(modules, str) or not all(isinstance(m, str) for m in modules) or not modules:
            raise ValueError(f"TorchCompile: modules must be a non-empty list of attribute paths, got {modules!r}")
        if isinstance(stages, str) or not set(stages) <= set(STAGES):
            raise ValueError(f"TorchCompile: stages must be a list drawn from {list(STAGES)}, got {stages!r}")
        if mode not in MODES:
            raise ValueError(f"TorchCompile: mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"TorchCompile: backend must be a backend name such as 'inductor', got {backend!r}")
        self.modules, self.stages = list(modules), list(stages)
        self.options: dict[str, Any] = {"mode": mode, "fullgraph": fullgraph, "dynamic": dynamic, "backend": backend}
        self._compiled: list[nn.Module] = []

    def _targets(self, pl_module: LightningModule) -> list[nn.Module]:
        targets = []
        wrapped = self._default and not hasattr(pl_module, "transformer") and hasattr(pl_module, "net")
        for path in ["net.transformer"] if wrapped else self.modules:
            try:
                targets.append(pl_module.get_submodule(path))
            except AttributeError:
                children = ", ".join(name for name, _ in pl_module.named_children())
                raise ValueError(
                    f"TorchCompile: {type(pl_module).__name__} has no submodule {path!r}; its children: {children}"
                ) from None
        return targets

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in self.stages:
            return
        targets = self._targets(pl_module)  # a wrong path fails here, before any compilation
        if self.options["backend"] == "inductor" and pl_module.device.type == "cpu":
            _check_cpu_compiler()
        for module in targets:
            module.compile(**self.options)
            self._compiled.append(module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for module in self._compiled:  # back to eager: nn.Module.compile only set this attribute
            module._compiled_call_impl = None
        self._compiled = []

    def __repr__(self) -> str:
        return f"TorchCompile(modules={self.modules}, stages={self.stages}, {self.options})"


def _check_cpu_compiler() -> None:
    """Inductor builds C++ kernels on the CPU: name the missing compiler now, not at the first step."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # any failure to find one means the same to the user
        raise RuntimeError(
            f"TorchCompile: torch.compile's inductor backend needs a C++ compiler on the CPU ({err}); "
            "install one (e.g. g++) or drop the TorchCompile callback"
        ) from err
