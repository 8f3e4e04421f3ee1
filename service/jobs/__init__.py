"""What a job is: the registry of job types and their policies, the handler's context, and a job's
record as RQ stores it (pure encoding, no I/O). May import `config` and `net`."""
