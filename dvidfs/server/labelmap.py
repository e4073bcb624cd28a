"""(being written)"""
from __future__ import annotations

from dvidfs.server.routes import Routes


def register(routes: Routes) -> None:
    pass
