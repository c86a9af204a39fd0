"""The heart of the flow: the pipeline with edge processing, timestamps, and the durable buffer."""
