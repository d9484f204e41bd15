"""Service discovery: where each module's instances are and whether they are healthy."""
