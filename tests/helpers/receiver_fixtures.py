"""Fault-injecting receiver fixtures. Filled by the fault-peer work."""
