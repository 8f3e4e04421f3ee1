"""Configuration: the validated settings, the constants and key names, the queue names, the CPUs
a container may use. The lowest layer: it imports nothing else of the service."""
