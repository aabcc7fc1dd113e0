//! The gRPC contract (`nurse.v1`) between agents and the aggregator. Not written yet: issue 3 adds the `.proto` files and the generated code.
