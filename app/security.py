"""Bearer-token check for the /v1 routes, active when ``API_KEY`` is set."""

from __future__ import annotations

import secrets

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="Needed only when the service runs with API_KEY set.")


async def require_api_key(request: Request,
                          credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """401 unless the bearer token is API_KEY (async: see app.inference.get_pool)."""
    expected = request.app.state.settings.api_key
    if not expected:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong API key (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})
