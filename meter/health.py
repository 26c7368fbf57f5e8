"""`/healthz` (the process is alive), `/readyz` (its database answers and is migrated to head) and
`HEAD /` (Claude Code's connectivity probe)."""

from __future__ import annotations

from litestar import Response, get, head
from litestar.handlers import HTTPRouteHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from meter.db.queries import migration_heads


def health_routes(engine: AsyncEngine, expected_heads: set[str]) -> list[HTTPRouteHandler]:
    @get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", include_in_schema=False)
    async def readyz() -> Response[dict[str, str]]:
        try:
            async with engine.connect() as conn:
                heads = await migration_heads(conn)
        except Exception as exc:  # any failure means not ready; say which
            return Response({"status": "database unreachable", "error": exc.__class__.__name__}, status_code=503)
        if heads != expected_heads:
            return Response({"status": "migrations not at head"}, status_code=503)
        return Response({"status": "ready"})

    @head("/", include_in_schema=False)
    async def probe() -> None:
        """Claude Code's connectivity probe."""

    return [healthz, readyz, probe]
