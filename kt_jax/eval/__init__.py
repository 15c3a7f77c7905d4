"""Frozen-feature evaluation: kNN, linear probe and neighbour contact sheets."""
