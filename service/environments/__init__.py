"""Environments over HTTP: the available kinds, registered instances, and trying one out."""
