"""ntpy.core."""
