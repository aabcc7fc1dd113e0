//! The aggregator tier. Not written yet: issue 3 builds gRPC ingest, the matrix and fault localisation here.
