"""Drop robosuite's "No private macro file found!" notice, and nothing else robosuite logs.

robosuite 1.4 logs three warnings when it is imported without ``robosuite/macros_private.py`` (a copy of
its ``macros.py`` that ``robosuite/scripts/setup_macros.py`` writes for users who want to change the
defaults). LIBERO and this project run on those defaults, so the notice asks a user to do nothing
useful. A filter on robosuite's own logger drops exactly those three messages; every other robosuite
warning and error still reaches the console and robosuite's log file.
"""

from __future__ import annotations

import logging

ROBOSUITE_LOGGER = "robosuite_logs"  # robosuite.utils.log_utils.DefaultLogger's logger name
_NOTICE = ("No private macro file found!", "It is recommended to use a private macro file")


class _MacroNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        setup_hint = message.startswith("To setup, run: python ") and message.endswith("setup_macros.py")
        return not (message in _NOTICE or setup_hint)


def quiet_macro_notice() -> None:
    """Install the filter on robosuite's logger (idempotent; call before robosuite is imported)."""
    logger = logging.getLogger(ROBOSUITE_LOGGER)
    if not any(isinstance(f, _MacroNoticeFilter) for f in logger.filters):
        logger.addFilter(_MacroNoticeFilter())
