"""Foundations every layer uses: configuration, events, counters, address typing."""
