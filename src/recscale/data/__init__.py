"""The data path: raw files -> prepared dataset -> batches. Imports no model, trainer or metric."""
