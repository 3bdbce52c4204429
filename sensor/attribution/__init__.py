"""Endpoint mode: which process made a connection (socket tables, /proc)."""
