"""Monitoring outputs of the daemon: Prometheus exposition, statistics files, web status.

Everything here reads snapshots (``ntpy.core.status``) and counters; nothing changes state.
"""
