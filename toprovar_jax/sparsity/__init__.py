"""The sparsity wing: static plans and what they mean (SPEC §3, §5, §6).

Plan types (`plan`), the JSON form (`codec`), validation, the FastVAR /
SkipVAR baselines (`baselines`), named-plan lookup with the shipped plans
(`named`, `plans/`), token selection (`selection`) and the cache layout a
plan implies (`layout`). Calibration (plans from entropy statistics) lands
here too. See docs/ARCHITECTURE.md.
"""
