"""Runs over HTTP: start, watch (metrics, trajectories, events) and control training runs."""
