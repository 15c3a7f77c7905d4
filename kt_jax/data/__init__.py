"""Datasets built from files on disk: no download is ever needed."""
