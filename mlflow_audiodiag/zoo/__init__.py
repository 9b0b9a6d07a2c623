"""The fault zoo: reproducible training scenarios, one per cause of stagnant validation."""
