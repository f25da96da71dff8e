"""Message catalogues: every word on the console comes from ``i18n/<language>.json``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES = ("zh-CN", "en")
_DIR = Path(__file__).parent / "i18n"


@cache
def catalogue(language: str) -> dict[str, str]:
    data = json.loads((_DIR / f"{language}.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


class Translator:
    """``t("key", n=3)``: the catalogue text with ``{n}`` filled in; an unknown key falls back
    to English, then to the key itself (a test checks both catalogues have every key)."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else LANGUAGES[0]
        self._text = catalogue(self.language)
        self._fallback = catalogue("en")

    def __call__(self, key: str, **values: object) -> str:
        text = self._text.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        return key in self._text

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Every text whose key starts with ``prefix`` (the strings handed to the page's JS)."""
        return {k: v for k, v in self._text.items() if k.startswith(prefix)}
