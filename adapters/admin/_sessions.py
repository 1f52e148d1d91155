"""Admin sign-in: the token check, sessions held in memory, and their CSRF tokens.

A session is a random id in an HttpOnly, SameSite=Strict cookie that expires; the server keeps
only a hash of it, so a memory dump does not hand out live cookies. Each session has its own
CSRF token, which every form that changes something carries. A restart signs everyone out.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

COOKIE = "videobot_admin"
SESSION_S = 8 * 3600
WRONG_TOKEN_DELAY_S = 1.0


@dataclass
class Session:
    csrf: str
    expires: float


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def is_https(request: web.Request) -> bool:
    """Served over https here, or by a proxy in front that says so."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip() == "https"


class Sessions:
    def __init__(self, token: str, *, lifetime_s: float = SESSION_S, wrong_delay_s: float = WRONG_TOKEN_DELAY_S) -> None:
        self._token = token.encode()
        self._lifetime_s = lifetime_s
        self._wrong_delay_s = wrong_delay_s
        self._held: dict[str, Session] = {}
        # Wrong guesses wait their turn one at a time, so guessing in parallel gains nothing.
        self._guesses = asyncio.Lock()

    async def check_token(self, given: str) -> bool:
        """True for the right token; a wrong one answers only after a delay."""
        if hmac.compare_digest(given.encode(), self._token):
            return True
        async with self._guesses:
            await asyncio.sleep(self._wrong_delay_s)
        return False

    def open(self, response: web.StreamResponse, request: web.Request) -> Session:
        self._sweep()
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=time.time() + self._lifetime_s)
        self._held[_digest(session_id)] = session
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(self._lifetime_s),
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=is_https(request),
        )
        return session

    def of(self, request: web.Request) -> Session | None:
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        session = self._held.get(_digest(session_id))
        if session is None or session.expires < time.time():
            return None
        return session

    def close(self, request: web.Request, response: web.StreamResponse) -> None:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            self._held.pop(_digest(session_id), None)
        response.del_cookie(COOKIE, path="/admin")

    @staticmethod
    def csrf_ok(session: Session, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())

    def _sweep(self) -> None:
        now = time.time()
        for key in [k for k, s in self._held.items() if s.expires < now]:
            del self._held[key]
