"""Examples for dockerflow-async: the demo service and deployment files."""
