"""`async with` for the worker's long-lived services, each with an explicit start and stop."""

from __future__ import annotations

from typing import Self


class AsyncLifecycle:
    """Gives a class with `async start()` and `async stop()` the `async with` protocol."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> object:
        """Whatever it returns is the subclass's to define; `async with` ignores it."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
