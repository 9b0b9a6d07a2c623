"""The audio transformer classifier."""
