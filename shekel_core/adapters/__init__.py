"""Adapters patch client libraries so that their calls are counted. One module per library."""
