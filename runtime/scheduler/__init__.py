"""Device descriptors, model cost features, explained placement, priority dispatch."""
