"""The collector's web dashboard: server-rendered pages at `/` (see docs/dashboard.md).

Its router is collector/routers/dashboard.py; here are the views, templates, sessions and charts.
"""
