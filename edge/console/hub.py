"""The guard console's live feed (the shared SSE hub, rendering with the console's texts)."""

from __future__ import annotations

from edge.console.i18n import Translator
from webkit import hub
from webkit.hub import Subscriber

__all__ = ["Hub", "Subscriber"]


class Hub(hub.Hub[Translator]):
    def __init__(self) -> None:
        super().__init__(Translator)
