"""Framework integrations (``shekel.integrations.langchain``, ``shekel.integrations.llamaindex``).

This package imports nothing: each integration imports its framework when it is itself imported.
"""
