"""Who may see the dashboard: the holder of a one-time token, then of the session it became.

The token travels in a URL (printed by `shoal dashboard`, like Jupyter's), so it is good for
one exchange only and a short while: the exchange sets a random session cookie (HttpOnly,
SameSite=Strict, kept in memory) and redirects to a URL without the token. Every other
request without a live session gets 401, the page, its files, the stream and the actions
alike: a browser's navigation gets login.py's page (a form to paste the token into, no
cluster data), anything else a line of text. Actions also need a custom header, which a
cross-site form cannot send and a cross-site fetch could only send after a CORS preflight
this server never answers.
"""
from __future__ import annotations

import hmac
import secrets
import time
from typing import Awaitable, Callable, Optional

from aiohttp import web

from shoal.dashboard import login

COOKIE = "shoal_dashboard"
CSRF_HEADER = "X-Shoal-Dashboard"
# Long enough to copy a link into a browser, short enough that a leaked link soon goes stale.
TOKEN_TTL = 600.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No framing by other sites, no scripts or styles from elsewhere, no token in a Referer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Gate:
    """Tokens not yet used and the sessions they became; all of it dies with the listener."""

    def __init__(self, token_ttl: float = TOKEN_TTL) -> None:
        self.token_ttl = token_ttl
        self._tokens: dict[str, float] = {}   # token -> when it expires (monotonic)
        self._sessions: set[str] = set()

    def mint_token(self) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self.token_ttl
        return token

    def redeem(self, token: str) -> Optional[str]:
        """A new session for a live, unused token (which is used up), else None."""
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        match = next((t for t in self._tokens if hmac.compare_digest(t, token)), None)
        if match is None:
            return None
        del self._tokens[match]
        session = secrets.token_urlsafe(32)
        self._sessions.add(session)
        return session

    def has_session(self, session: Optional[str]) -> bool:
        if not session:
            return False
        return any(hmac.compare_digest(s, session) for s in self._sessions)

    def clear(self) -> None:
        self._tokens.clear()
        self._sessions.clear()


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=SECURITY_HEADERS)


def middleware(gate: Gate):
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.query.get("token")
        if request.path == "/" and request.method == "GET" and token is not None:
            session = gate.redeem(login.token_of(token))
            if session is None:
                return login.page(why="This dashboard link was already used or has expired: "
                                      "run `shoal dashboard` on the manager for a new one.",
                                  headers=SECURITY_HEADERS)
            resp = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/"})
            resp.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/")
            return resp
        if not gate.has_session(request.cookies.get(COOKIE)):
            if login.is_navigation(request):
                return login.page(headers=SECURITY_HEADERS)
            return _refuse(401, "401: no dashboard session; open the link `shoal dashboard` "
                                "prints")
        if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
            return _refuse(403, f"403: actions need the {CSRF_HEADER}: 1 header the page sends")
        resp = await handler(request)
        if not resp.prepared:  # a stream sets its own before it starts
            for key, value in SECURITY_HEADERS.items():
                resp.headers.setdefault(key, value)
        return resp
    return guard
