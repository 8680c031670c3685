"""Jobs: the command line, job specs, the scoring pipeline, aggregation and reports."""
