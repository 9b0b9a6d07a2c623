"""Helpers shared by the test suites (real MLflow servers, not mocks)."""
