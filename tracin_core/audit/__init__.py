"""The audit backend the Streamlit pages call: workspaces, mislabel rankings, reviews.

``workspace`` (the ``Workspace`` facade) and ``workspace_config`` (its typed config),
``rankers`` and ``active_review`` (mislabel rankings), ``review`` and ``review_queue``
(decisions, SQLite), ``labels_csv``, ``datasets``, ``models``, ``demo``, ``settings``,
``server_config``. Built on :mod:`tracin_core.engine`, never the other way round.
"""
