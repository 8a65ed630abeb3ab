"""Whole-scan inference: a thick volume in, a thin volume on the documented grid out."""
