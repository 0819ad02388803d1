"""Data: built-in data sets and the resumable, process-count-independent batch order."""
