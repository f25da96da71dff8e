"""Message catalogues: every word on a console comes from ``<dir>/<language>.json``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES = ("zh-CN", "en")
"""zh-CN first: the default for every console."""


@cache
def load_catalogue(directory: Path, language: str) -> dict[str, str]:
    data = json.loads((directory / f"{language}.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


class Translator:
    """``t("key", n=3)``: the catalogue text with ``{n}`` filled in; an unknown key falls back
    to English, then to the key itself (each console's tests check both catalogues have every
    key)."""

    directory: Path  # set by each console's subclass

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else LANGUAGES[0]
        self._text = load_catalogue(self.directory, self.language)
        self._fallback = load_catalogue(self.directory, "en")

    def __call__(self, key: str, **values: object) -> str:
        text = self._text.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        return key in self._text

    def prefixed(self, prefix: str) -> dict[str, str]:
        """Every text whose key starts with ``prefix`` (the strings handed to the page's JS)."""
        return {k: v for k, v in self._text.items() if k.startswith(prefix)}
