"""The edges: capture (files, live), sinks, metrics, systemd notification, privileges."""
