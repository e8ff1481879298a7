"""neox_arguments package."""
