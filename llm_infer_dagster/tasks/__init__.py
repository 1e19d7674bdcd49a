"""Task folders (the seed's contract), their sampling parameters and how their rows are cut into shards."""
