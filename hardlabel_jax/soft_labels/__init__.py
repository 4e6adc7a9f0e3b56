"""Soft-label tables: teacher label payload formats and their on-disk storage."""
