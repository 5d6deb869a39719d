"""Review page (placeholder until its issue lands)."""
import streamlit as st

from pages import common

ws = common.current_workspace()
st.title("Review")
