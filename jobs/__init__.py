"""The job worker's tasks on procrastinate: settling scheduled deposits, expiring holds,
re-enqueueing due deposits and overdue holds whose job went missing, retrying jobs of dead
workers, pruning old jobs and keys."""
