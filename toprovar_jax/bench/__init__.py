"""The benchmark wing: latency, compile time, profiles (GPU studies).

  latency       time one plan's generation program (transformer, decode)
  compile_time  lowering / compile time of plans and of block chains
  profile       device trace -> kernels, idle gaps, per-scale attribution
  attention     one attention call with and without entropy (FAE)
  results       what a benchmark run records (metadata, markdown table)

Random weights: latency does not depend on values. See docs/ARCHITECTURE.md.
"""
