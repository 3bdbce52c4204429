"""Protocol analyzers (sans-IO)."""
