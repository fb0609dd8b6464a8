"""Training data: manifests, annotation, preparation into training shards (see docs/data.md)."""
