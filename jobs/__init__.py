"""The job worker's tasks on procrastinate: settling scheduled deposits, re-enqueueing due
deposits whose job went missing, retrying jobs of dead workers, pruning old jobs and keys."""
