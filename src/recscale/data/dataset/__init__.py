"""Stage 3, the prepared directory's format, read side: what a prepared directory is (schema.py),
`PreparedDataset` (prepared.py), the per-user CSR files (csr.py, whose writer prepare uses), pair
keys (keys.py). Depends on nothing in prepare/."""
