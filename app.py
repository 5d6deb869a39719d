"""TracIn Audit — Streamlit entry point and router.

Run: ``streamlit run app.py`` (opens on the built-in digits demo).
"""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="TracIn Audit", page_icon=":material/manage_search:", layout="wide")

from pages import common  # noqa: E402  (after set_page_config)

PAGES = [
    st.Page("pages/workspace.py", title="Workspace", icon=":material/folder_open:", url_path="workspace", default=True),
    st.Page("pages/influence.py", title="Influence", icon=":material/search:", url_path="influence"),
    st.Page("pages/review.py", title="Review", icon=":material/fact_check:", url_path="review"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/monitoring:", url_path="evaluation"),
]

nav = st.navigation(PAGES)
st.sidebar.title("TracIn Audit")
common.sidebar_summary(common.current_workspace(show_errors=False))
nav.run()
