"""Peer job queues measured beside the service in the same run (opt-in: --peers)."""

from benchmarks.peers.phase import run

__all__ = ["run"]
