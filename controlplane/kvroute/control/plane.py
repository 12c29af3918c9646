"""Runs the control plane's loops for a gateway: discovery now; polling and health join here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvroute.gateway import Gateway


class ControlPlane:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def start(self) -> None:
        for url in self.gateway.settings.backend:
            self.gateway.fleet.add(url, source="static")

    async def stop(self) -> None:
        pass
