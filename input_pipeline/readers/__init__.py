"""Exact readers of the public STL and CTL files, image folders and checks, bad-record
bookkeeping, and the TFDS builders and sources."""
