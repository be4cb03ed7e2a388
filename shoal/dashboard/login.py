"""The one page the dashboard shows without a session: a form to paste the token into.

A browser that opens the dashboard's address without the link `shoal dashboard` printed (a
bookmark, a session lost to a daemon restart) gets this instead of a bare 401 text, still with
status 401: it holds no cluster data, only a form whose GET to `/?token=...` is the same
exchange the printed link makes (auth.middleware). Its own CSP: nothing loads, its one inline
style is allowed by its hash, and the form may submit to this origin only.
"""
from __future__ import annotations

import base64
import hashlib
import html
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;max-width:34rem;margin:4rem auto;"
          "padding:0 1rem;color:#1d2330}input{width:100%;font:inherit;padding:.4rem;"
          "margin:.4rem 0}button{font:inherit;padding:.3rem 1rem}.why{color:#c0392b}"
          "code{background:#eef0f4;padding:0 .2rem}")
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>shoal dashboard: sign in</title>
<style>{style}</style>
</head>
<body>
<h1>shoal dashboard</h1>
{why}<p>This dashboard opens with the one-time link that <code>shoal dashboard</code> prints on
the manager. Paste that link, or its token, here:</p>
<form id="login" method="get" action="/">
<label for="token">Link or token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<button id="login-submit" type="submit">Open the dashboard</button>
</form>
</body>
</html>
"""


def page(status: int = 401, why: Optional[str] = None,
         headers: Optional[dict[str, str]] = None) -> web.Response:
    """The login page; `why` says what was wrong with a token just tried."""
    reason = f'<p class="why" id="why">{html.escape(why)}</p>\n' if why else ""
    return web.Response(status=status, text=_PAGE.format(style=_STYLE, why=reason),
                        content_type="text/html",
                        headers={**(headers or {}), "Content-Security-Policy": CSP})


def is_navigation(request: web.Request) -> bool:
    """A browser asking for a page to show (not a script, a fetch or the event stream): the
    address `/`, or any other GET whose fetch metadata or Accept says it wants a document."""
    if request.method not in ("GET", "HEAD") or request.path.startswith("/api/"):
        return False
    if request.path == "/":
        return True
    if request.headers.get("Sec-Fetch-Dest") == "document":
        return True
    return "text/html" in request.headers.get("Accept", "")


def token_of(pasted: str) -> str:
    """The token in what a person pasted: the token itself, or the whole printed link."""
    text = pasted.strip()
    if "token=" in text:
        found = parse_qs(urlsplit(text).query).get("token")
        if found:
            return found[0]
    return text
