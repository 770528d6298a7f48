"""Renderers: read the evidence and the diagnosis, never compute them."""
