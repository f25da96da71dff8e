"""Message catalogues: every word on the guard console comes from ``i18n/<language>.json``."""

from __future__ import annotations

from pathlib import Path

from webkit import i18n
from webkit.i18n import LANGUAGES

__all__ = ["LANGUAGES", "Translator", "catalogue"]

_DIR = Path(__file__).parent / "i18n"


def catalogue(language: str) -> dict[str, str]:
    return i18n.load_catalogue(_DIR, language)


class Translator(i18n.Translator):
    directory = _DIR
