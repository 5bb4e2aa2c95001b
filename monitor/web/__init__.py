"""The operator web app: pages and JSON API over the store (see docs/web.md)."""

from __future__ import annotations


def create_app(settings, store, extra_routers=(), consumer_lag=None):
    """Build the FastAPI app; imported lazily so `import monitor.web` stays light."""
    from monitor.web.app import create_app as build

    return build(settings, store, extra_routers=extra_routers, consumer_lag=consumer_lag)


__all__ = ["create_app"]
