"""Restoration stages learned from statistics of the waveform (issue 21)."""
