"""A test app whose service signatures use pydantic models."""
