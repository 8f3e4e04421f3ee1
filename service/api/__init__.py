"""The publisher: the HTTP API (Starlette on uvicorn) that validates jobs against the registry and
publishes them. May import every layer below it; never `worker` or `dev`."""
