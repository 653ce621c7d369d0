"""Writes. Keyword-only, typed functions that change the record and then announce it."""
