"""eval_tasks package."""
