"""More than one process or device: torch.distributed set-up, DDP and the all-reduce of sums
(distributed.py), TorchRec-sharded embedding tables, the only importer of torchrec (sharding.py),
and the checkpoint protocol of sharded tables (checkpoints.py)."""
