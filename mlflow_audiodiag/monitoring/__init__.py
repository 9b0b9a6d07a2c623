"""Training-time diagnostics: gradient, update, data, prediction and attention signals."""
