"""Real OIDC sign-in through Streamlit's st.login against the loopback test provider.

Two browser contexts sign in as two different users against one provider and one
Streamlit server; signing one out leaves the other signed in.
"""
from __future__ import annotations

import time

import pytest

from tests.conftest import ARTIFACTS, REPO
from tests.oidc_provider import oidc_provider, streamlit_with_auth  # noqa: F401 (fixture)

PROBE = "tests/apps/login_probe.py"
WAIT_MS = 30_000


def _wait_signed_in(page, email: str) -> None:
    page.get_by_text(f"signed-in-as: {email}", exact=True).wait_for(timeout=WAIT_MS)


def _wait_signed_out(page) -> None:
    page.get_by_text("signed-out", exact=True).wait_for(timeout=WAIT_MS)
    page.get_by_role("button", name="Sign in").wait_for(timeout=WAIT_MS)


def _sign_in(page, url: str, email: str) -> None:
    page.goto(url)
    _wait_signed_out(page)
    page.get_by_role("button", name="Sign in").click()
    _wait_signed_in(page, email)  # provider round trip: /auth/login -> /authorize -> /oauth2callback -> /


@pytest.mark.browser
def test_two_users_sign_in_and_one_signs_out(oidc_provider, browser, tmp_path):  # noqa: F811
    started = time.monotonic()
    with streamlit_with_auth(oidc_provider, PROBE, tmp_path) as app:
        contexts = {}
        try:
            pages = {}
            for email in ("alice@example.com", "bob@example.com"):
                ctx = browser.new_context()
                contexts[email] = ctx
                oidc_provider.sign_in_as(ctx, email)
                page = ctx.new_page()
                page.set_default_timeout(WAIT_MS)
                pages[email] = page
                _sign_in(page, app.url, email)
            alice, bob = pages["alice@example.com"], pages["bob@example.com"]

            # each context keeps its own identity cookie across a fresh session
            for email, page in pages.items():
                page.reload()
                _wait_signed_in(page, email)
                assert page.get_by_text("signed-in-as: ").count() == 1
            assert alice.get_by_text("name: Alice", exact=True).count() == 1
            assert bob.get_by_text("name: Bob", exact=True).count() == 1
            assert alice.get_by_text("sub: mock|alice@example.com", exact=True).count() == 1
            assert alice.get_by_text("email_verified: True", exact=True).count() == 1
            log = oidc_provider.log_path.read_text()
            assert "token: issued for alice@example.com" in log and "token: issued for bob@example.com" in log

            # Bob signs out (Streamlit clears its cookie, then the provider's end_session
            # endpoint redirects back); Alice stays signed in
            bob.get_by_role("button", name="Sign out").click()
            _wait_signed_out(bob)
            bob.reload()
            _wait_signed_out(bob)
            alice.reload()
            _wait_signed_in(alice, "alice@example.com")
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            for email, ctx in contexts.items():
                for i, pg in enumerate(ctx.pages):
                    pg.screenshot(path=str(ARTIFACTS / f"oidc-{email}-{i}.png"))
            print(f"streamlit log: {app.log_path}\nprovider log: {oidc_provider.log_path}")
            raise
        finally:
            for ctx in contexts.values():
                ctx.close()
    print(f"oidc login test: {time.monotonic() - started:.1f} s")


def test_apptest_user_simulates_sign_in_and_sign_out():
    """No browser or provider: AppTest.user is what the script reads as st.user.

    Set "is_logged_in" explicitly: without an [auth] secrets section st.user has no
    is_logged_in at all (AppTest's default user is {"email": "test@example.com"}).
    st.login() itself cannot run under AppTest (it needs [auth] in a secrets file;
    at.secrets does not reach it).
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / PROBE))
    at.user = {"is_logged_in": True, "email": "alice@example.com", "name": "Alice",
               "sub": "mock|alice@example.com", "email_verified": True}
    at.run()
    assert [t.value for t in at.text][:2] == ["signed-in-as: alice@example.com", "name: Alice"]

    at.button[0].click().run()  # "Sign out": st.logout() resets at.user ...
    assert at.user == {"is_logged_in": False}
    at.run()  # ... and the next run takes the signed-out branch
    assert [t.value for t in at.text] == ["signed-out"]
    assert [b.label for b in at.button] == ["Sign in"]
