"""ntpy.cli."""
