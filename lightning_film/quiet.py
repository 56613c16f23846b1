"""Library notices a ``lightning-film`` user cannot act on, silenced where they arise.

Each filter names one message and the module that emits it, so every other warning (about the
user's config, data or model, or a new one from a library) still shows. The command installs
them (:func:`quiet_library_notices`); importing ``lightning_film`` as a library changes no
filter, so a Python user keeps whatever their own program decides.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["LIBRARY_NOTICES", "quiet_library_notices"]

#: (message regex, category, emitting module regex) of the warnings silenced, with why
LIBRARY_NOTICES: list[tuple[str, type[Warning], str]] = [
    # Lightning's own pytree helper still builds torch's deprecated LeafSpec (torch 2.13);
    # nothing a user writes reaches it, and Lightning will change it, not the user
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # "logger=True will use CSVLogger unless tensorboard is found": tensorboard is in our default
    # install and the README says where logs go, so this only repeats what the user already chose
    (
        r"Starting from v1\.9\.0, `tensorboardX` has been removed",
        UserWarning,
        r"lightning\.pytorch\.trainer\.connectors\.logger_connector",
    ),
]

#: the start of Lightning's advertisement for its cloud logger, printed as an info line on every
#: Trainer built without one (Lightning 2.6 has no setting for it)
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


_TIP_FILTER = _DropLitLoggerTip()


def quiet_library_notices() -> None:
    """Install the filters (idempotent): warnings by message and module, the tip by its text on
    the logger Lightning's ``rank_zero_info`` writes to."""
    for message, category, module in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
