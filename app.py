"""TracIn Audit — Streamlit entry point and router.

Run: ``streamlit run app.py`` (opens on the built-in digits demo).
"""
from __future__ import annotations


from pages import common

common.page_config()
nav = common.navigation()
with common.routed():
    nav.run()
