"""What a pass keeps: the accumulators (mergeable, saveable statistics), the engine and stream that feed them
one chunk at a time, the second passes (NC4, probe scoring, compare), and saved partial statistics."""
