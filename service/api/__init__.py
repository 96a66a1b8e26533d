"""What every HTTP route shares: the error format, the bearer-token guard, dependencies, metrics."""
