"""Distribution over processes: who is who (processes.py), launching through Accelerate, DDP and FSDP, and the
workarounds Accelerate needs."""
