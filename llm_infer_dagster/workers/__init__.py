"""Engine worker processes: each loads its model once and turns prompt shards into completion shards."""
