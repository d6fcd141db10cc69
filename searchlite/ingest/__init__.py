"""Bringing an index in line with folders: scan, diff, decode, encode, commit."""
