"""Tools around the library: benchmarks, the GPU check, SmolLM2 conversion, Step-DPO interop, sweeps."""
