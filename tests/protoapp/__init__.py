"""Protocol-typed dependencies: bound at startup to the implementing service."""
