"""The TracIn engine: Captum-compatible classes over a feature store, one pass over the data.

By pipeline stage: ``checkpoints`` (safe loading) → ``featurize`` (per-example quantities,
the one pass) → ``store`` (the feature store and its array accessors) → ``scoring``
(blockwise scores and top-k) → ``tracin`` (``TracInCP``, ``TracInCPFast``,
``TracInCPFastRandProj``); besides them ``nearest_neighbors`` (annoy), ``influence_index``
(top-k for millions of rows), ``batching``, ``distributed``, ``errors``, ``switches``,
``allocator`` (glibc's malloc set up for large CPU batches).
Nothing here imports :mod:`tracin_core.audit`.
"""
