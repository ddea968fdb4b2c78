"""The collector's HTTP API, one `APIRouter` per thing served; `create_app` (collector/app.py)
includes them. deps.py holds what they share (the `Service` and `Who` dependencies)."""
