"""Crash recovery: writer leases, and the sweep that repairs what a dead writer left."""
