"""Smallest st.login / st.user / st.logout app, for tests/test_oidc_login.py (and AppTest)."""
import streamlit as st

st.title("Login probe")
if not st.user.is_logged_in:
    st.text("signed-out")
    if st.button("Sign in"):
        st.login()
else:
    st.text(f"signed-in-as: {st.user.email}")
    st.text(f"name: {st.user.name}")
    st.text(f"sub: {st.user.sub}")
    st.text(f"email_verified: {st.user.email_verified}")
    if st.button("Sign out"):
        st.logout()
