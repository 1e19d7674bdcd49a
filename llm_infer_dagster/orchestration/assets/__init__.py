"""A task's partitioned assets: the factory that declares them and the pipeline that streams shards."""
