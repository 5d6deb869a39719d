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
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        # the Evaluation page's kinds of figure, built once: plotly loads each property's
        # validator on its first use (about 0.2 s of the first figure, else paid by the page)
        fig = make_subplots(rows=1, cols=2)
        fig.add_trace(go.Scatter(x=[0.0, 1.0], y=[0.0, 1.0], mode="lines", name="a", legendgroup="a",
                                 line=dict(width=1.0, color="#000000", dash="dot")), row=1, col=1)
        fig.add_trace(go.Bar(x=[0.5], y=["a"], orientation="h", text=["50%"], textposition="auto", width=0.1,
                             opacity=0.5, marker_color="#4C78A8"), row=1, col=2)
        fig.update_xaxes(title_text="x", tickformat=".0%", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title_text="y", autorange="reversed", row=1, col=2)
        fig.update_layout(height=300, barmode="overlay", title="t", margin=dict(l=1, r=1, t=1, b=1),
                          legend=dict(x=1, y=1, xanchor="right", bgcolor="rgba(255,255,255,0.6)", font=dict(size=12),
                                      itemclick="toggleothers", title=dict(text="t")))
        fig.to_json()

        print(f"TracIn Audit: engine imported at server start in {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)

    @contextlib.asynccontextmanager
    async def _warm(_app):
        # a thread, so the server answers at once; a session arriving meanwhile waits on
        # Python's import lock for the modules being imported, never imports them twice
        threading.Thread(target=_import_engine, name="tracin-warm-imports", daemon=True).start()
        yield

    app = st.App(__file__, lifespan=_warm)
