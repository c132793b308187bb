"""The run directory: atomic writes and checkpoints, the environment record, and the data
fingerprint that ties a run to the exact data it saw."""
