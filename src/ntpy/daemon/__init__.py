"""ntpy.daemon."""
