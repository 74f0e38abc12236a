"""The write path: the per-message buffer, terminal judgement, the flusher and group commit."""
