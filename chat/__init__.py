"""The chat lambda: retrieve within the distance threshold, prompt, stream the answer, keep history."""
