"""megatron package."""
