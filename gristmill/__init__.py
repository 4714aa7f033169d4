"""Gristmill: a self-hostable feature store."""
