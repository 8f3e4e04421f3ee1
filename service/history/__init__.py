"""The job history in MongoDB: the client, and the shipper that moves events from Redis into it.
May import every layer below it (`config`, `net`, `jobs`, `telemetry`, `store`)."""
