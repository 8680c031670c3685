"""The job folder: its layout, Parquet schemas, job.json, the writer lock."""
