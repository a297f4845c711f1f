"""The chat pipeline: everything between a user's message and the saved reply."""
