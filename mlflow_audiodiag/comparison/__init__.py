"""Team-wide comparison: diagnoses of many runs side by side."""
