"""What the Prefect tasks stand on: settings, the sandbox, evaluation, the results store."""
