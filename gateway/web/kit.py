"""What every central console page shares: who is looking, in which language, how a page is
rendered and sent, and the live feed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.api.auth import Principal, authenticator
from webkit import hub, i18n
from webkit.i18n import LANGUAGES

if TYPE_CHECKING:
    from gateway.service import GatewayRuntime

HERE = Path(__file__).parent
LANG_COOKIE = "cg_lang"

HOME = {
    "dispatcher": "/dispatch",
    "guard": "/dispatch",
    "supervisor": "/dispatch",
    "technician": "/technician",
    "inspector": "/inspector",
    "admin": "/admin",
}
"""Where each role lands after logging in."""

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class Translator(i18n.Translator):
    """The central consoles' texts: every ``i18n/*.<language>.json`` merged (one file per
    console, ``common`` for what they share; a test checks both languages have every key)."""

    directory = HERE / "i18n"

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else LANGUAGES[0]
        self._text = catalogue(self.language)
        self._fallback = catalogue("en")


_CATALOGUES: dict[str, dict[str, str]] = {}


def catalogue(language: str) -> dict[str, str]:
    found = _CATALOGUES.get(language)
    if found is None:
        found = {}
        for path in sorted((HERE / "i18n").glob(f"*.{language}.json")):
            part = i18n.load_catalogue(path.parent, path.name.removesuffix(".json"))
            clash = found.keys() & part.keys()
            if clash:
                raise ValueError(f"{path.name}: keys defined twice: {sorted(clash)[:5]}")
            found.update(part)
        _CATALOGUES[language] = found
    return found


class Web:
    """The kit handed to each console's routes."""

    def __init__(self, rt: GatewayRuntime) -> None:
        self.rt = rt
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.hub: hub.Hub[Translator] = hub.Hub(Translator)
        """Live frames for open console tabs; ``publish(render, scope=campus)`` reaches only
        the tabs whose user may see that campus."""

    def translator(self, request: Request) -> Translator:
        return Translator(request.cookies.get(LANG_COOKIE) or LANGUAGES[0])

    async def viewer(self, request: Request, *roles: str) -> Principal:
        """The logged-in user of a page (session cookie only), else off to the login page;
        a role not in ``roles`` (none given: any) gets 403."""
        who = await authenticator(request).identify(request)
        if who is None or who.via != "session":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, headers={"Location": f"/login?next={target}"})
        if roles and who.role not in roles:
            await authenticator(request).audit(
                who, "page", "denied", request, target=request.url.path
            )
            raise HTTPException(403, f"role {who.role} may not open this page")
        return who

    def page(
        self,
        request: Request,
        template: str,
        who: Principal | None,
        *,
        js_prefixes: Iterable[str] = (),
        **ctx: Any,
    ) -> HTMLResponse:
        t = self.translator(request)
        js: dict[str, str] = {}
        for prefix in ("js.", *js_prefixes):
            js.update(t.prefixed(prefix))
        html = self.env.get_template(template).render(
            t=t,
            who=who,
            languages=LANGUAGES,
            path=request.url.path,
            home=HOME,
            js=js,
            gateway=self.rt.cfg.gateway.id,
            **ctx,
        )
        return HTMLResponse(html, headers=SECURITY_HEADERS)
