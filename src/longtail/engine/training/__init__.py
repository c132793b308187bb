"""One training run: the data setup (config -> loaders), the components (model, loss, regularizer,
optimizer), the learning-rate schedule and the trainer that writes a run directory."""
