"""What every command-line tool shares: a --help that shows defaults only where they say something.

It lives in features/ (the bottom layer) so every CLI of every layer can use it.
"""
from __future__ import annotations

import argparse

# Defaults that read as noise in --help: "(default: None)", "(default: False)" on a flag, "(default: [])".
SILENT_DEFAULTS = (None, False, [], ())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, minus the defaults that say nothing (unset, off, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if any(default is d or (type(default) is type(d) and default == d) for d in SILENT_DEFAULTS):
            return action.help
        return super()._get_help_string(action)
