"""Enforcement stages of the request path, one module each, each a plain function tests call alone."""
