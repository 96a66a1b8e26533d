"""The pipeline behind the API: the orchestrator that samples and publishes each run's
batches (`orchestrator`), the trainer worker that trains them (`worker`), what both share
(`runtime`), and the child process that runs them beside the API (`process`)."""
