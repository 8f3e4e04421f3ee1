"""The worker: a supervisor, its worker processes that claim and run jobs, and its health server.
May import every layer below it; never `api` or `dev`."""
