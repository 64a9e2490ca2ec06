"""Steps an item goes through between a source and a sink: queueing, batching, remapping, dedupe."""
