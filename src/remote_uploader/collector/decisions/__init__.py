"""Decisions: rules over time windows (rules.py), the engine that applies them (engine.py),
decision values and allowlists (values.py), and their API (api.py). See docs/decisions.md."""
