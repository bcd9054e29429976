"""Errors of the data layer (a module of its own so that every data module can raise them)."""

from __future__ import annotations


class DomainError(ValueError):
    """A domain spec, dataset or split that cannot be used; the message names the domain, column or row."""
