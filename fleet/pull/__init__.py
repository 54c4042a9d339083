"""Pull updates (docs/pull.md): signed documents in a static store that boards poll."""
