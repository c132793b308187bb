"""Where and how numbers are computed: device choice and torch.distributed process groups
(torchrun), and the run's numeric precision (autocast)."""
