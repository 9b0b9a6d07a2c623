"""Audio datasets: the embedded synthetic corpus and the user's own audio, as a clip table."""
