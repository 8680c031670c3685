"""The scoring engine: scorer actors on Ray, the scheduling of plan and score calls."""
