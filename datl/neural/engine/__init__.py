"""The engine: torchrun set-up, the device preamble, the training loop and its state,
optimiser groups and schedules, and the one batched inference function."""
