"""Cog's server package; ``python -m cog.server.http`` starts cogd."""
