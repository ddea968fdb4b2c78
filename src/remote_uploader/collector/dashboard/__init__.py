"""The collector's web dashboard: server-rendered pages at `/` (see docs/dashboard.md)."""

from remote_uploader.collector.dashboard.routes import add_dashboard

__all__ = ["add_dashboard"]
