"""TracIn Audit — Streamlit entry point and router.

Run: ``streamlit run app.py`` (opens on the built-in digits demo).

This file is read two ways. Every session runs it as a script (``__name__ == "__main__"``):
that is the router below. ``streamlit run`` first imports it as a module to look for an
ASGI app: ``app`` is one (``st.App``, serving this same script) whose lifespan imports the
engine and the pages' shared module (torch among them, 2-3 s) in a thread as soon as the
server starts, so that the first visitor does not wait for it.
"""
from __future__ import annotations

import streamlit as st

if __name__ == "__main__":  # a session's run
    from pages import common

    common.page_config()
    nav = common.navigation()
    with common.routed():
        nav.run()
else:  # `streamlit run app.py` looking for the server
    import contextlib
    import sys
    import threading
    import time

    def _import_engine() -> None:
        t = time.perf_counter()
        import pages.common  # noqa: F401  (tracin_core, torch, pandas)
        from pages import charts

        charts.warm_up()  # the Evaluation page's figures, built once (plotly's lazy validators)

        print(f"TracIn Audit: engine imported at server start in {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)

    @contextlib.asynccontextmanager
    async def _warm(_app):
        # a thread, so the server answers at once; a session arriving meanwhile waits on
        # Python's import lock for the modules being imported, never imports them twice
        threading.Thread(target=_import_engine, name="tracin-warm-imports", daemon=True).start()
        yield

    app = st.App(__file__, lifespan=_warm)
