"""What people look at, built from a job folder alone: summaries, maps, the report."""
