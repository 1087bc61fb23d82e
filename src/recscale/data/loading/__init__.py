"""Stage 4, a prepared dataset -> typed training batches (batch.py): the in-memory loaders
(memory.py), the streaming ones (stream.py), what they share (epochs.py, sampling.py, prefetch.py),
and the factory (factory.py), the one place that decides between memory and stream."""
