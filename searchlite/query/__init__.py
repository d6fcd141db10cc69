"""Queries: parsing terms and weights, and the search loop."""
