"""The user's own modules, imported before a command reads the registries.

A conditioner registered with ``@register_conditioner("scale_only")`` in ``my_cond.py`` exists
only once ``my_cond`` is imported; nothing else in a command would import it. So a config names
its modules, and the command imports them before it builds anything::

    imports: [my_cond]                          # in the config, beside trainer/model/data
    lightning-film fit --imports my_cond ...    # or on the command line (also: list, export)

A spec is a module importable from the working directory (``my_cond``, ``mypkg.conditioners``)
or a ``.py`` file, found in the working directory, else beside the config files.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from lightning_film.errors import UsageError

__all__ = ["IMPORTS_HELP", "import_user_modules"]

IMPORTS_HELP = (
    "Your own modules to import first, so the names they register (conditioners, normalizers, ...) "
    "can be used: module names importable from the working directory, or .py files"
)


def import_user_modules(specs: Iterable[str] | str | None, search: Iterable[str | Path] = ()) -> list[ModuleType]:
    """Import each spec (see the module docstring); ``search``: further folders for ``.py`` files.

    A module that cannot be imported is a :class:`UsageError` naming it and why; an error raised
    by the module's own code propagates with its traceback (it is the user's bug, not a typo).
    """
    if isinstance(specs, str):  # `--imports a` or `--imports a,b` on the command line
        specs = [s for s in specs.split(",") if s.strip()]
    folders = [Path.cwd(), *(Path(f) for f in search)]
    modules = []
    for spec in specs or []:
        spec = str(spec).strip()
        modules.append(_import_file(spec, folders) if spec.endswith(".py") else _import_module(spec, folders))
    return modules


def _import_module(name: str, folders: list[Path]) -> ModuleType:
    # the config's folders join the path for this import only: `imports: [my_cond]` finds the
    # my_cond.py beside the config wherever the command runs from
    added = [str(f) for f in folders[1:] if str(f) not in sys.path]
    sys.path.extend(added)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not name.startswith(err.name):
            raise  # the module itself imports something missing: its own error says what
        raise UsageError(
            f"imports: cannot import module {name!r} ({err}); give a module importable from "
            f"{', '.join(map(str, folders))} or a .py file"
        ) from None
    finally:
        for folder in added:
            sys.path.remove(folder)


def _import_file(spec: str, folders: list[Path]) -> ModuleType:
    path = Path(spec)
    found = next((f / path for f in ([Path()] if path.is_absolute() else folders) if (f / path).is_file()), None)
    if found is None:
        raise UsageError(f"imports: file {spec!r} does not exist (looked in {', '.join(map(str, folders))})")
    name = found.stem
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == found.resolve():
        return loaded  # imported once per process, so its registrations do not collide
    module_spec = importlib.util.spec_from_file_location(name, found)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, as the import system does (pickling, dataclasses)
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
