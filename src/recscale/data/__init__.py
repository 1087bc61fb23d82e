"""The data path, one package per stage, each reading only what the stage before it made:

    ingest/   raw files -> a canonical table (RawDataset) or a lazy scan (ScanSource)
    prepare/  table or scan -> a prepared directory (filters, ids, protocols, evaluation negatives;
              the in-memory and streaming engines)
    dataset/  the prepared directory's format, read side (PreparedDataset, CSR files, meta.json)
    loading/  a prepared dataset -> typed training batches (in memory or streamed)

Imports no model, trainer or metric."""
