"""Review page: training examples ranked as likely mislabelled, one decision per click.

Every decision is written to the review store (``tracin_core.ReviewStore``) at once, so a
reload or a crash loses nothing. "My queue" hands each reviewer the best-ranked item that
nobody decided and nobody else holds (``ReviewStore.claim_next``), so two annotators
never see the same item at once; "All items" browses the filtered ranking; "Conflicts"
lists items whose reviewers disagree and records an adjudicator's final decision.

UI only: rankings, predictions and proponents come from the Workspace, decisions and
counts from the ReviewStore.
"""
from __future__ import annotations

import itertools

import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import streamlit as st

from pages import common
from tracin_core.audit import active_review as ar
from tracin_core.audit import live_queue as lq
from tracin_core.engine.checkpoints import CheckpointError
from tracin_core.audit.rankers import DEFAULT_RANKER
from tracin_core.audit.review import ReviewStoreError, final_status, open_items
from tracin_core.audit.review_queue import queue_order, review_table
from tracin_core.audit.workspace import WorkspaceError

DEFAULT_LABEL = "(default)"
MODES = ["My queue", "All items", "Conflicts"]
STATUSES = ["undecided", "accepted", "relabelled", "excluded", "skipped", "ambiguous",
            "outlier", "duplicate", "conflict"]
LEASE_SECONDS = 120.0  # an abandoned claim frees its item after this long
RENEW_SECONDS = 40.0  # an open page renews its claim this often
STORE_ERRORS = (ReviewStoreError, ValueError, OSError)
STATUS_BADGE = {
    "undecided": ":gray-badge[undecided]", "accepted": ":green-badge[accepted]",
    "relabelled": ":blue-badge[relabelled]", "excluded": ":red-badge[excluded]",
    "skipped": ":gray-badge[skipped]", "conflict": ":orange-badge[conflict]",
    "ambiguous": ":yellow-badge[ambiguous]", "outlier": ":primary-badge[outlier]",
    "duplicate": ":gray-badge[duplicate]",
}
#: what a flash message says after each action
VERBS = {"accept": "accepted", "relabel": "relabelled", "exclude": "excluded",
         "skip": "skipped", "ambiguous": "marked ambiguous",
         "outlier": "marked an outlier (none of the classes)", "duplicate": "marked a duplicate"}

# "R" is reserved by Streamlit (rerun), so st.button(shortcut="r") is refused: this
# listener (capture phase, before Streamlit's) clicks the Relabel button instead. It does
# nothing while typing in a field, with modifiers (Ctrl+R still reloads), or on other
# pages (there "R" keeps rerunning the app).
RELABEL_KEY_JS = """
<script>
(function () {
  if (window.__tracinRelabelKey) { return; }
  window.__tracinRelabelKey = true;
  function clickRelabel(tries) {
    var btn = document.querySelector(".st-key-rv_relabel button");
    if (btn && !btn.disabled) { btn.click(); return; }
    if (tries > 0) { setTimeout(function () { clickRelabel(tries - 1); }, 50); }
  }
  window.addEventListener("keydown", function (e) {
    if (e.key !== "r" && e.key !== "R") { return; }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || e.defaultPrevented) { return; }
    var t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName || ""))) { return; }
    if (!/\\/review\\/?$/.test(window.location.pathname)) { return; }
    e.preventDefault();
    e.stopImmediatePropagation();
    clickRelabel(20);  // the button may be re-rendering right after the last action
  }, true);
})();
</script>
"""


# Streamlit draws the key badge (a <kbd>) only on buttons with a shortcut, and refuses
# shortcut="r": the Relabel button gets the same badge from CSS (size, spacing and opacity
# of Streamlit's own; the listener above does the key press).
RELABEL_BADGE_CSS = """
<style>
.st-key-rv_relabel button [data-has-shortcut] { display: flex; align-items: center; gap: 8px; }
.st-key-rv_relabel button [data-has-shortcut]::after {
  content: "R"; display: flex; font-size: 14px; line-height: 17.5px; letter-spacing: 0.14px;
  opacity: 0.6;
}
</style>
"""


# ---------------------------------------------------------------------------- state


def _state() -> Any:
    return st.session_state


def _undo_stack(reviewer: str) -> list[int]:
    """This session's decisions (item ids, oldest first) for ``reviewer``."""
    stacks = _state().setdefault("rv_undo", {})
    return stacks.setdefault(reviewer, [])


def _set_error(exc: BaseException) -> None:
    _state()["rv_error"] = str(exc)


def _flash(text: str) -> None:
    _state()["rv_flash"] = text


def _next_after(item: int, order: list[int]) -> Optional[int]:
    """The item after ``item`` in ``order`` (None at the end)."""
    try:
        pos = order.index(item)
    except ValueError:
        return order[0] if order else None
    return order[pos + 1] if pos + 1 < len(order) else None


# ------------------------------------------------------------------------ callbacks


def duplicate_error(value: Any, item: int, n_items: int) -> Optional[str]:
    """Why ``value`` cannot be the other item of "``item`` is a duplicate of #value" in a
    training set of ``n_items`` (None when it can)."""
    if value is None or value == "":
        return "Enter the index of the item it duplicates (Duplicate of #) first."
    try:
        other = int(value)
        whole = not isinstance(value, bool) and float(value) == other
    except (TypeError, ValueError, OverflowError):
        other, whole = -1, False
    if not whole:
        return f"Duplicate of #{value}: not an item index."
    if not 0 <= other < n_items:
        return (f"Duplicate of #{other}: there is no such item (the training set has "
                f"indices 0 to {n_items - 1:,}).")
    if other == item:
        return f"Item #{item} cannot be a duplicate of itself: enter the other item's index."
    return None


def _decide(store, reviewer: str, action: str, item: int, given: int,
            score: float, ranking: str, order: list[int], label_key: Optional[str] = None,
            to_class: Optional[int] = None, dup_key: Optional[str] = None,
            n_items: int = 0) -> None:
    """Record one decision now; then move on (the queue claims the next item).

    A relabel takes the class from the selectbox ``label_key``, or ``to_class`` (the
    number keys); a duplicate takes the other item from the number input ``dup_key``
    (checked against ``n_items``: nothing is recorded when it is not another item)."""
    if common.refuse("review", "record review decisions", reviewer):
        return
    new_label, duplicate_of = None, None
    if action == "relabel":
        new_label = to_class if to_class is not None else _state().get(label_key)
        if new_label is None:
            _state()["rv_error"] = "Choose the new label first."
            return
        new_label = int(new_label)
    if action == "duplicate":
        value = _state().get(dup_key) if dup_key else None
        problem = duplicate_error(value, item, n_items)
        if problem is not None:
            _state()["rv_error"] = problem
            return
        duplicate_of = int(value)
    try:
        store.record(item, reviewer, action, new_label, given_label=given,
                     ranking=ranking, score=score, duplicate_of=duplicate_of)
    except STORE_ERRORS as exc:
        _set_error(exc)
        return
    _undo_stack(reviewer).append(item)
    verb = VERBS[action]
    extra = f" → {_state().get('rv_class_names', {}).get(new_label, new_label)}" if action == "relabel" else ""
    if action == "duplicate":
        extra = f" of #{duplicate_of}"
    _flash(f"#{item} {verb}{extra}")
    if _state().get("rv_mode") == "All items":
        _state()["rv_item"] = _next_after(item, order)
    else:
        _state().pop("rv_current", None)


def _undo(store, reviewer: str) -> None:
    """Revert this reviewer's last decision: this session's stack, else the store's history."""
    if common.refuse("review", "undo review decisions", reviewer):
        return
    stack = _undo_stack(reviewer)
    try:
        item = None
        while stack:
            candidate = stack.pop()
            if store.undo(candidate, reviewer) is not None:
                item = candidate
                break
        if item is None:
            item = store.last_decision(reviewer)
            if item is None or store.undo(item, reviewer) is None:
                _flash("Nothing to undo.")
                return
    except STORE_ERRORS as exc:
        _set_error(exc)
        return
    _flash(f"Undid your last decision on #{item}")
    _state()["rv_item"] = item  # "All items" shows it again
    _state()["rv_current"] = item  # "My queue" claims it first


def _adjudicate(store, reviewer: str, item: int, given: int, ranking: str,
                score: Optional[float]) -> None:
    if common.refuse("adjudicate", "adjudicate conflicts", reviewer):
        return
    choice = _state().get(f"rv_adj_choice_{item}", "accept")
    new_label, exclude, flag, duplicate_of = None, False, None, None
    if choice == "exclude":
        exclude = True
    elif choice.startswith("relabel:"):
        new_label = int(choice.split(":", 1)[1])
    elif choice in ("ambiguous", "outlier"):
        flag = choice
    elif choice.startswith("duplicate:"):
        flag, duplicate_of = "duplicate", int(choice.split(":", 1)[1])
    try:
        store.record(item, reviewer, "adjudicate", new_label, given_label=given,
                     ranking=ranking, score=score, exclude=exclude, flag=flag,
                     duplicate_of=duplicate_of)
    except STORE_ERRORS as exc:
        _set_error(exc)
        return
    _undo_stack(reviewer).append(item)
    _flash(f"Final decision recorded for #{item}")


def _status_text(decision: Any) -> str:
    """A decision's status, with the other item of a duplicate ("duplicate of #12")."""
    status = str(decision["status"])
    other = decision.get("duplicate_of") if hasattr(decision, "get") else None
    if status == "duplicate" and other is not None and not pd.isna(other):
        return f"duplicate of #{int(other)}"
    return status


def _cls(ws, label) -> str:
    """A class name as markdown-safe text (class names can come from folder names)."""
    return common.esc(common.class_name(ws, label))


def _go_to(order: list[int], step: int) -> None:
    cur = _state().get("rv_item")
    if not order:
        return
    pos = order.index(cur) if cur in order else 0
    _state()["rv_item"] = order[max(0, min(len(order) - 1, pos + step))]


def _jump() -> None:
    value = _state().get("rv_jump")
    if value is not None:
        _state()["rv_item"] = int(value)
        _state()["rv_pinned"] = True
        _state()["rv_jump"] = None


# --------------------------------------------------------------------------- export


def _exporter(make: Callable[[Path], Any], suffix: str) -> Callable[[], bytes]:
    """A deferred download: writes the export to a temporary file when clicked."""
    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix="tracin-export-") as tmp:
            path = Path(tmp) / f"export{suffix}"
            make(path)
            return path.read_bytes()
    return build


def render_export(ws, store, who: common.Identity, reviewer: str) -> None:
    st.subheader("Export")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", ws.name).strip("._") or "workspace"
    if not who.can("export_all"):
        st.caption(f"Your own decisions and events (as {common.esc(reviewer)}); admins export "
                   "everyone's and the corrected labels.")
        row = st.container(horizontal=True)
        row.download_button(
            "My decisions (CSV)", _exporter(lambda p: store.export(p, "decisions", reviewer=reviewer), ".csv"),
            file_name=f"{base}-my-decisions.csv", mime="text/csv", key="rv_dl_mine_csv",
            on_click="ignore", icon=":material/download:")
        row.download_button(
            "My history (CSV)", _exporter(lambda p: store.export(p, "history", reviewer=reviewer), ".csv"),
            file_name=f"{base}-my-history.csv", mime="text/csv", key="rv_dl_mine_history",
            on_click="ignore", icon=":material/download:")
        return
    st.caption("Final decisions (adjudications win, otherwise the reviewers' consensus), "
               "every event, or corrected labels for the whole training set — load the "
               "last one in a workspace file as `[train] labels_override = \"file.csv\"`; "
               "items flagged excluded, ambiguous, outlier or duplicate are then excluded, "
               "or kept with their given label with `flagged = \"keep\"`.")
    row = st.container(horizontal=True)
    row.download_button(
        "Decisions (CSV)", _exporter(lambda p: store.export(p, "decisions"), ".csv"),
        file_name=f"{base}-decisions.csv", mime="text/csv", key="rv_dl_decisions_csv",
        on_click="ignore", icon=":material/download:")
    row.download_button(
        "Decisions (JSON)", _exporter(lambda p: store.export(p, "decisions"), ".json"),
        file_name=f"{base}-decisions.json", mime="application/json",
        key="rv_dl_decisions_json", on_click="ignore", icon=":material/download:")
    row.download_button(
        "Full history (CSV)", _exporter(lambda p: store.export(p, "history"), ".csv"),
        file_name=f"{base}-history.csv", mime="text/csv", key="rv_dl_history_csv",
        on_click="ignore", icon=":material/download:")
    row.download_button(
        "Corrected labels (CSV)",
        _exporter(lambda p: store.export_corrected_labels(p, ws.train.labels.tolist()), ".csv"),
        file_name=f"{base}-labels_override.csv", mime="text/csv",
        key="rv_dl_corrected_csv", on_click="ignore", icon=":material/download:")


# ---------------------------------------------------------------------------- views


def render_progress(snap, total: int) -> None:
    """Progress bar and counts from a :class:`~tracin_core.audit.review.ReviewSnapshot`."""
    overall, mine = snap.progress, snap.mine
    # a skip leaves the item open: it is not counted as decided
    decided = int(overall["decided"]) - int(overall.get("skipped", 0))
    mine_decided = int(mine["decided"]) - int(mine.get("skipped", 0))
    st.progress(min(1.0, decided / max(1, total)),
                text=f"**{decided:,} / {total:,}** items decided "
                     f"({100.0 * decided / max(1, total):.1f}%) · you: {mine_decided:,}")
    counts = []
    for label, key in [("accepted", "accepted"), ("relabelled", "relabelled"),
                       ("excluded", "excluded"), ("skipped", "skipped"),
                       ("ambiguous", "ambiguous"), ("outlier", "outlier"),
                       ("duplicate", "duplicate"), ("conflict", "conflict")]:
        n, m = int(overall.get(key, 0)), int(mine.get(key, 0))
        counts.append(STATUS_BADGE[label].replace(f"[{label}]", f"[{label} {n:,}]")
                      + f" <small>(you {m:,})</small>")
    counts.append(f":violet-badge[adjudicated {int(overall.get('adjudicated', 0)):,}]")
    st.markdown(" &nbsp; ".join(counts), unsafe_allow_html=True)
    by = overall.get("by_reviewer") or {}
    if by:
        st.caption("By reviewer: " + " · ".join(f"**{common.esc(name)}** {n:,}" for name, n in by.items()))


def render_proponents(ws, item: int, given: int) -> None:
    st.markdown("**Top proponents** (training examples that most support the given label)")
    try:
        props = common.train_proponents(ws, item, given, k=5)
    except (WorkspaceError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
        st.caption(f"Proponents unavailable: {common.public_message(exc)}")
        return
    if props.empty:
        st.caption("No proponents.")
        return
    cols = st.columns(len(props))
    for col, row in zip(cols, props.itertuples(index=False)):
        col.image(common.upscale(ws.train.image(int(row.index)), 72),
                  caption=f"#{int(row.index)} · {common.class_md(ws, int(row.label))} · "
                          f"{float(row.score):.3g}")


def queue_members(order: list[int], n: int) -> np.ndarray:
    """(n,) bool: which items are in ``order``; kept for the order object of the last full
    run, so a key press does not rebuild a set of every matching item (a million at 1M)."""
    kept = _state().get("rv_members")
    if kept is None or kept[0] is not order or len(kept[1]) != n:
        members = np.zeros(n, dtype=bool)
        members[np.asarray(order, dtype=np.int64)] = True
        _state()["rv_members"] = kept = (order, members)
    return kept[1]


def render_item(ws, store, reviewer: str, item: int, table: pd.DataFrame, ranking: str,
                order: list[int], decisions: pd.DataFrame, finals: Optional[pd.DataFrame] = None) -> None:
    row = table.loc[item]
    given = int(row["label"])
    score = float(row["score"])
    suggested = int(row["suggested"])
    predicted = int(row["predicted"])
    status, final_by = (str(row["status"]), row["final_by"]) if finals is None else final_status(finals, item)
    with st.container(key="rv_item_panel", border=True):
        left, mid, right = st.columns([0.9, 1.4, 1.9], gap="medium")
        with mid:
            mine = decisions[(decisions["item_id"] == item) & (decisions["reviewer"] == reviewer)]
            others = decisions[(decisions["item_id"] == item) & (decisions["reviewer"] != reviewer)]
            mine_text = "—" if mine.empty else _status_text(mine.iloc[0])
            lines = [
                f"**Given label:** {_cls(ws, given)}",
                f"**Model predicts:** {_cls(ws, predicted)} "
                f"({float(row['probability']):.1%})"
                + ("" if predicted != given else " — agrees with the given label"),
                f"**Suggested label:** {_cls(ws, suggested)} "
                f"({float(row['suggested_probability']):.1%})",
                f"**Score:** {score:.4g} · **Rank:** {int(row['rank']):,} of {len(table):,}",
                f"**Status:** {STATUS_BADGE.get(status, status)}"
                + (f" (final, adjudicated by {common.esc(final_by)})" if final_by else "")
                + f" · your decision: {mine_text}",
            ]
            if not others.empty:
                lines.append("**Other reviewers:** " + ", ".join(
                    f"{common.esc(r['reviewer'])}: {_status_text(r)}"
                    + (f" → {_cls(ws, int(r['final_label']))}"
                       if r["status"] == "relabelled" and not pd.isna(r["final_label"]) else "")
                    for r in others.to_dict("records")))
            st.markdown("  \n".join(lines))
        classes = list(range(len(ws.classes)))
        label_key = f"rv_to_{item}"
        if label_key not in _state():
            _state()[label_key] = suggested
        common_args = dict(item=item, given=given, score=score, ranking=ranking, order=order)
        actions = st.container(horizontal=True, gap="small", vertical_alignment="bottom",
                               key="rv_actions")
        actions.button("Accept (A)", key="rv_accept", shortcut="a", type="primary",
                       on_click=_decide, args=(store, reviewer, "accept"),
                       kwargs=common_args, help="Keep the given label")
        actions.selectbox("Relabel to", classes, key=label_key, width=150,
                          format_func=lambda k: common.class_name(ws, k),
                          help="Defaults to the suggested label")
        actions.button("Relabel (R)", key="rv_relabel", on_click=_decide,
                       args=(store, reviewer, "relabel"),
                       kwargs=dict(common_args, label_key=label_key),
                       help="Change the label to the one chosen on the left (key R)")
        actions.button("Exclude (E)", key="rv_exclude", shortcut="e", on_click=_decide,
                       args=(store, reviewer, "exclude"), kwargs=common_args,
                       help="Drop the example from the training data")
        actions.button("Skip (S)", key="rv_skip", shortcut="s", on_click=_decide,
                       args=(store, reviewer, "skip"), kwargs=common_args,
                       help="Leave it for now (other reviewers still get it)")
        actions.button("Undo (U)", key="rv_undo_btn", shortcut="u", on_click=_undo,
                       args=(store, reviewer), help="Revert your last decision")
        # no label fits: flags (stored as decisions; corrected labels name them)
        flags = st.container(horizontal=True, gap="small", vertical_alignment="bottom",
                             key="rv_flags")
        flags.button("Ambiguous (M)", key="rv_ambiguous", shortcut="m", on_click=_decide,
                     args=(store, reviewer, "ambiguous"), kwargs=common_args,
                     help="More than one class fits (key M)")
        flags.button("Outlier (O)", key="rv_outlier", shortcut="o", on_click=_decide,
                     args=(store, reviewer, "outlier"), kwargs=common_args,
                     help="None of the classes fits (key O)")
        dup_key = f"rv_dup_of_{item}"
        flags.number_input("Duplicate of #", min_value=0, value=None, step=1, key=dup_key,
                           placeholder="index", width=140,
                           help="The index of the training item this one duplicates")
        flags.button("Duplicate (D)", key="rv_duplicate", shortcut="d", on_click=_decide,
                     args=(store, reviewer, "duplicate"),
                     kwargs=dict(common_args, dup_key=dup_key, n_items=len(ws.train)),
                     help="A duplicate of the item whose index is on the left (key D)")
        # one key per class: relabel to class k with the number key k (the first ten classes)
        _state()["rv_class_names"] = {k: common.class_name(ws, k) for k in classes}
        quick = st.container(horizontal=True, gap="small", key="rv_quick")
        quick.caption("Relabel to, by number key:")
        for k in classes[:10]:
            if k == given:
                continue
            quick.button(common.class_md(ws, k), key=f"rv_to_class_{k}", shortcut=str(k), type="tertiary",
                         on_click=_decide, args=(store, reviewer, "relabel"),
                         kwargs=dict(common_args, to_class=k), help=f"Relabel to {common.class_name(ws, k)} (key {k})")
        # the item's image (its "Item #N" caption tells a reviewer the next item is there) and
        # the proponents (an influence search: the slow part, 0.2-0.8 s at 1M rows) are drawn
        # into their columns after the action buttons: a key pressed as soon as the item shows
        # finds its button and shortcut there (drawn later, the first press on a freshly
        # opened page landed before the buttons existed and was lost)
        left.image(common.upscale(ws.train.image(item), 224), caption=f"Item #{item}")
        with right:
            render_proponents(ws, item, given)


def render_queue(ws, store, reviewer, table, order, ranking, decisions, finals) -> None:
    current = _state().get("rv_current")
    candidates = order
    members = queue_members(order, len(ws.train))
    if current is not None and 0 <= int(current) < len(members) and members[int(current)]:
        candidates = itertools.chain([int(current)], order)
    try:
        item = store.claim_next(reviewer, candidates, lease_seconds=LEASE_SECONDS)
    except STORE_ERRORS as exc:
        st.error(f"Could not claim the next item: {common.public_message(exc)}")
        return
    _state()["rv_claimed"] = True
    if item is None:
        held = store.claims()
        held = held[held["reviewer"] != reviewer]
        st.success("Your queue is empty: every item that matches the filters is decided"
                   + (f" or held by another reviewer ({len(held)} held now)." if len(held) else ".")
                   + " Change the filters, switch to **All items**, or check **Conflicts**.")
        return
    _state()["rv_current"] = item
    still_open = open_items(finals, members)
    st.caption(f"Your queue: {still_open:,} of the {len(order):,} items that match the filters are "
               f"still open; you get the best-ranked one that nobody decided and no other "
               f"reviewer holds, and hold it while this page is open.")
    render_item(ws, store, reviewer, item, table, ranking, order, decisions, finals)


def render_browse(ws, store, reviewer, table, order, ranking, decisions, finals) -> None:
    if not order:
        st.info("No item matches the filters.")
        return
    cur = _state().get("rv_item")
    pinned = _state().pop("rv_pinned", False)
    members = queue_members(order, len(ws.train))

    def place(item: int) -> int:
        """Where ``item`` falls in ``order`` (kept in rank order): the first matching item
        ranked at or after it (vectorised: no per-item lookups at a million rows)."""
        in_order = members[table["index"].to_numpy()]
        return int(np.searchsorted(table["rank"].to_numpy()[in_order], int(table.loc[item, "rank"])))

    if cur is None or cur not in table.index:
        cur = order[0]
    elif not members[int(cur)] and not pinned:
        pos = place(int(cur))  # keep the place
        cur = order[pos] if pos < len(order) else order[0]
    cur = int(cur)
    _state()["rv_item"] = cur
    if st.query_params.get("item") != str(cur):
        st.query_params["item"] = str(cur)
    if not members[cur]:  # asked for by number: shown even if the filters hide it
        pos = place(cur)
        order = order[:pos] + [cur] + order[pos:]
        _state()["rv_pinned"] = True
    pos = order.index(cur)
    nav = st.container(horizontal=True, vertical_alignment="bottom")
    nav.button("◀ Previous", key="rv_prev", on_click=_go_to, args=(order, -1),
               disabled=pos == 0, shortcut="Left")
    nav.button("Next ▶", key="rv_next", on_click=_go_to, args=(order, 1),
               disabled=pos + 1 >= len(order), shortcut="Right")
    nav.number_input("Go to item #", min_value=0, max_value=len(table) - 1, value=None,
                     step=1, key="rv_jump", on_change=_jump, placeholder="index",
                     width=160)
    nav.markdown(f"Position **{pos + 1:,}** of **{len(order):,}** matching items")
    render_item(ws, store, reviewer, cur, table, ranking, order, decisions, finals)


def render_conflicts(ws, store, who, reviewer, table, ranking) -> None:
    try:
        conflicts = store.conflicts()
        finals = store.final_decisions()
    except STORE_ERRORS as exc:
        st.error(f"Could not read the conflicts: {common.public_message(exc)}")
        return
    if conflicts.empty:
        st.success("No conflicts: wherever several reviewers decided an item, they agree.")
    else:
        items = sorted(conflicts["item_id"].unique().tolist(),
                       key=lambda i: int(table.loc[i, "rank"]) if i in table.index else 0)
        if who.can("adjudicate"):
            st.markdown(f"**{len(items)}** item(s) where reviewers disagree. Record a final "
                        f"decision as **{common.esc(reviewer)}** (an adjudication overrides every reviewer).")
        else:
            st.markdown(f"**{len(items)}** item(s) where reviewers disagree. An admin records "
                        "the final decision.")
        for item in items[:25]:
            item = int(item)
            rows = conflicts[conflicts["item_id"] == item]
            info = table.loc[item] if item in table.index else None
            given = int(info["label"]) if info is not None else int(rows["given_label"].dropna().iloc[0])
            with st.container(border=True, key=f"rv_conflict_{item}"):
                c1, c2, c3 = st.columns([0.8, 2.2, 1.6], gap="medium")
                c1.image(common.upscale(ws.train.image(item), 112), caption=f"Item #{item}")
                with c2:
                    head = f"**Given label:** {_cls(ws, given)}"
                    if info is not None:
                        head += (f" · **model:** {_cls(ws, int(info['predicted']))} "
                                 f"({float(info['probability']):.1%}) · **rank** {int(info['rank']):,}")
                    st.markdown(head)
                    lines = []
                    for r in rows.itertuples(index=False):
                        label = "" if pd.isna(r.final_label) or r.status != "relabelled" \
                            else f" → {_cls(ws, int(r.final_label))}"
                        when = str(r.decided_at)[:19].replace("T", " ")
                        if r.status == "duplicate" and not pd.isna(r.duplicate_of):
                            label = f" of #{int(r.duplicate_of)}"
                        lines.append(f"- **{common.esc(r.reviewer)}**: {STATUS_BADGE.get(r.status, r.status)}"
                                     f"{label} <small>({when} UTC)</small>")
                    st.markdown("\n".join(lines), unsafe_allow_html=True)
                with c3:
                    if not who.can("adjudicate"):
                        st.caption("Only admins record final decisions.")
                        continue
                    duplicates = sorted({int(v) for s, v in zip(rows["status"], rows["duplicate_of"])
                                         if s == "duplicate" and not pd.isna(v)})
                    options = (["accept"] + [f"relabel:{k}" for k in range(len(ws.classes))
                                             if k != given] + ["exclude", "ambiguous", "outlier"]
                               + [f"duplicate:{k}" for k in duplicates])
                    relabels = [f"relabel:{int(v)}" for s, v in zip(rows["status"], rows["final_label"])
                                if s == "relabelled" and not pd.isna(v)]
                    default = relabels[0] if relabels else "accept"
                    key = f"rv_adj_choice_{item}"
                    if key not in _state() or _state()[key] not in options:
                        _state()[key] = default if default in options else "accept"

                    def fmt(opt: str, given: int = given) -> str:
                        if opt == "accept":
                            return f"Keep the given label ({common.class_name(ws, given)})"
                        if opt == "exclude":
                            return "Exclude the example"
                        if opt == "ambiguous":
                            return "Ambiguous (more than one class fits)"
                        if opt == "outlier":
                            return "Outlier (none of the classes fits)"
                        if opt.startswith("duplicate:"):
                            return f"Duplicate of #{opt.split(':')[1]}"
                        return f"Relabel to {common.class_name(ws, int(opt.split(':')[1]))}"

                    st.selectbox("Final decision", options, key=key, format_func=fmt)
                    st.button("Record final decision", key=f"rv_adj_{item}", type="primary",
                              on_click=_adjudicate,
                              args=(store, reviewer, item, given, ranking,
                                    float(info["score"]) if info is not None else None))
        if len(items) > 25:
            st.caption(f"… and {len(items) - 25} more; settle these first.")
    adjudicated = finals[finals["is_final"]] if not finals.empty else finals
    if not adjudicated.empty:
        st.markdown("**Final decisions recorded by an adjudicator**")
        st.dataframe(pd.DataFrame({
            "item": adjudicated["item_id"].astype(int).tolist(),
            "given": [common.class_name(ws, None if pd.isna(v) else int(v))
                      for v in adjudicated["given_label"]],
            "final": ["—" if pd.isna(v) else common.class_name(ws, int(v))
                      for v in adjudicated["final_label"]],
            "status": adjudicated["status"].tolist(),
            "adjudicator": adjudicated["reviewer"].tolist(),
        }), hide_index=True, width="stretch", height=min(300, 38 + 35 * len(adjudicated)))


# ---------------------------------------------------------------- live re-ranking
# The queue learns from the decisions (tracin_core.audit.active_review): a confirmed mislabel or
# a confirmed clean label is evidence about the examples like it. The order is recomputed
# every LIVE_EVERY decisions, so the queue does not shuffle under the reviewer at each key,
# and never inside a key press's page run: the key press that completes a batch hands it to
# a worker thread (lq.LiveReranker, one per ranking, shared by the sessions) and the queue
# on show stays; a later key press finds the result ready and reruns the page to swap it in
# (a full run that computes nothing). The item on show and the claimed item stay: only the
# queue ahead changes.
LIVE_EVERY = 10


@st.cache_resource(show_spinner="Preparing the queue that learns from the decisions…", max_entries=8)
def _live_signals(fingerprint: str, method: Optional[str], _ws) -> "ar.ReviewSignals":
    return _ws.review_signals(method)  # kept beside the store (precompute writes the default's)


@st.cache_resource(show_spinner=False, max_entries=8)
def _live_worker(fingerprint: str, method: Optional[str], _sig) -> "lq.LiveReranker":
    """The re-ranking worker of one ranking, shared by every session on the server."""
    return lq.LiveReranker(_sig)


def _outcome_key(finals: pd.DataFrame) -> tuple:
    return lq.outcome_key(ar.outcomes_from_finals(finals))


def _batch_due(used: tuple, key: tuple) -> bool:
    """Whether decisions ``key`` are a new batch against the ones the queue used: LIVE_EVERY
    of them changed, or none is left."""
    return len(set(used) ^ set(key)) >= LIVE_EVERY or (not key and bool(used))


def live_ranking(ws, method: Optional[str], ranking_table: pd.DataFrame,
                 finals: pd.DataFrame) -> pd.DataFrame:
    """The ranking table re-ranked by the decisions so far (when the sidebar switch is on),
    and the estimate of what is left kept for :func:`render_estimate`.

    The decisions used are refreshed once LIVE_EVERY of them changed: that batch goes to
    the worker and this run shows the last result (``rv_live_pending`` names the batch on
    its way); a run that finds it ready swaps it in. Only a session's first run on this
    ranking, which has nothing to show yet, computes in the page."""
    live_on = st.sidebar.toggle(
        "Learn from decisions", value=True, key="rv_live",
        help="Re-rank the queue as decisions arrive: a confirmed mislabel makes similar "
             f"examples with the same label more suspicious, a kept label less. Updated every "
             f"{LIVE_EVERY} decisions; off = the static ranking.")
    _state().pop("rv_live_estimate", None)
    try:
        sig = _live_signals(ws.fingerprint, method, ws)
    except (WorkspaceError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
        st.sidebar.caption(f"Learning from decisions unavailable: {common.public_message(exc)}")
        _state().pop("rv_live_worker", None)
        return ranking_table
    worker = _live_worker(ws.fingerprint, method, sig)
    _state()["rv_live_worker"] = worker  # the review fragment asks it whether a batch is ready
    key = _outcome_key(finals)
    used, pending = _state().get("rv_live_used"), _state().get("rv_live_pending")
    try:
        if _state().get("rv_live_workspace") != (ws.fingerprint, method) or used is None:
            used, pending = key, None  # another workspace or ranking, or the first visit
        else:
            if pending is not None and worker.get(pending) is not None:
                used, pending = pending, None  # the batch on its way is ready: swap it in
            if pending is None and _batch_due(used, key):
                if worker.get(key) is not None:
                    used = key
                else:
                    pending = key
            if pending is not None:
                worker.request(pending)  # again, in case it was dropped
        _state()["rv_live_used"], _state()["rv_live_pending"] = used, pending
        _state()["rv_live_workspace"] = (ws.fingerprint, method)
        result = worker.compute(used)  # ready, unless this is the first visit
    except ValueError as exc:  # e.g. a decision on an item the training data does not have
        _state()["rv_live_pending"] = None
        st.sidebar.caption(f"Learning from decisions unavailable: {common.public_message(exc)}")
        return ranking_table
    _state()["rv_live_estimate"] = (result.estimate, live_on and result.table is not None)
    if not live_on or result.table is None:
        return ranking_table
    return result.table


def live_due(snap) -> bool:
    """Whether to rerun the page to swap in a re-ranked queue (a batch handed to the worker
    earlier is ready). A new batch of LIVE_EVERY decisions (also with the switch off: the
    estimate follows the decisions) is handed to the worker here, without a rerun: the
    queue on show stays until its re-rank is ready."""
    worker, used = _state().get("rv_live_worker"), _state().get("rv_live_used")
    if worker is None or used is None:
        return False
    pending = _state().get("rv_live_pending")
    if pending is None:
        key = _outcome_key(snap.finals)
        if not _batch_due(used, key):
            return False
        _state()["rv_live_pending"] = pending = key
    try:
        ready = worker.get(pending) is not None
    except ValueError:
        return True  # the full run says what is wrong
    if not ready:
        worker.request(pending)
    return ready


def render_estimate() -> None:
    """Precision of the queue ahead and mislabels left, with their 90% intervals."""
    kept = _state().get("rv_live_estimate")
    if kept is None:
        return
    est, reranked = kept
    if est.reviewed == 0:
        st.caption("**Mislabels left:** no estimate before the first accept / relabel / exclude.")
        return
    pct = int(round(100 * est.level))
    st.markdown(
        f"**Mislabels left:** about **{est.remaining:,.0f}** of {est.unreviewed:,} unreviewed "
        f"({pct}% interval {est.remaining_low:,.0f}–{est.remaining_high:,.0f}) · "
        f"**precision of the next {est.ahead}:** {est.precision_ahead:.0%} "
        f"({est.precision_ahead_low:.0%}–{est.precision_ahead_high:.0%}) · "
        f"{'re-ranked by' if reranked else 'from'} {est.reviewed:,} decisions",
        help="From the decisions so far (accept = clean, relabel / exclude = mislabelled; "
             "skips and conflicts are no evidence): how often an item is mislabelled as a "
             "function of its place in the static ranking, fitted on the reviewed head of "
             "the queue and carried over to the rest. It assumes the unreviewed tail "
             "follows the same curve: mislabels the ranking cannot see at all are not "
             "counted. While the reviewed items cannot tell whether the mislabels stop soon "
             f"or go on, the interval is wide. Updated every {LIVE_EVERY} decisions.")


# ----------------------------------------------------------------------------- page


def sidebar_queue(ws, ranking_table: pd.DataFrame) -> dict[str, Any]:
    """Ranking choice and filters (sidebar)."""
    with st.sidebar:
        st.subheader("Queue")
        methods = ws.mislabel_methods()
        # one option per ranking, the default first and marked once; what the chosen one
        # measures is said below it (a tooltip listing them all was cut off)
        options = sorted(methods, key=lambda name: name != DEFAULT_RANKER)
        chosen = st.selectbox(
            "Ranking", options, key="rv_ranking",
            format_func=lambda name: f"{name} {DEFAULT_LABEL}" if name == DEFAULT_RANKER else name,
            help="Which mislabel score orders the queue (higher: more likely mislabelled).")
        st.caption(common.esc(methods.get(chosen, "")))
        classes = list(range(len(ws.classes)))
        given = st.multiselect("Given class", classes, key="rv_f_given",
                               format_func=lambda k: common.class_name(ws, k),
                               placeholder="any")
        sugg = st.multiselect("Suggested class", classes, key="rv_f_sugg",
                              format_func=lambda k: common.class_name(ws, k),
                              placeholder="any",
                              help="The model's prediction, or its second choice when the "
                                   "prediction equals the given label.")
        status = st.multiselect("Status", STATUSES, key="rv_f_status", placeholder="any")
        return dict(given=given, suggested=sugg, status=status)


def score_filter(ranking_table: pd.DataFrame, method_key: str) -> Optional[tuple[float, float]]:
    lo, hi = float(ranking_table["score"].min()), float(ranking_table["score"].max())
    if not np.isfinite(lo) or not np.isfinite(hi) or lo >= hi:
        return None
    value = st.sidebar.slider("Score range", min_value=lo, max_value=hi, value=(lo, hi),
                              key=f"rv_f_score_{method_key}", format="%.3g",
                              step=(hi - lo) / 200)
    if value[0] <= lo and value[1] >= hi:
        return None
    return float(value[0]), float(value[1])


def follow_identity(store, reviewer: str) -> None:
    """Claims follow the identity: a renamed session's old name lets go of its item."""
    before = _state().get("rv_identity")
    if before is not None and before != reviewer:
        try:
            store.release(before)
        except STORE_ERRORS:
            pass
        _state().pop("rv_current", None)
    _state()["rv_identity"] = reviewer


def carry_over(ws, store, other: int):
    """An earlier review of this workspace on other training data carried over here when
    these labels are its corrected labels (``ReviewStore.carry_over``); once per session
    and count of such events."""
    if not other:
        return None
    key = (ws.fingerprint, other)
    kept = _state().get("rv_carry")
    if kept is None or kept[0] != key:
        kept = (key, store.carry_over(ws.train.labels.tolist(), ws.train.excluded.tolist()))
        _state()["rv_carry"] = kept
    return kept[1]


def render_carry_over(ws, other: int, carried) -> None:
    """Say whether the earlier review on other training data carried over, and if not, why."""
    if not other or carried is None:
        return
    name = common.esc(ws.name)
    if carried.source is not None:
        st.info(f"The earlier review of **{name}** carried over: its decisions on "
                f"{carried.items:,} item(s) hold for these labels (they are its corrected labels), "
                f"so they count here and the queue goes on after them.", icon=":material/history:")
        return
    st.warning(
        f"{other:,} earlier review event(s) for workspace **{name}** were recorded on other "
        f"training data and are not carried over: {common.esc(carried.reason)}. A review carries "
        f"over only to the labels it produced (its **Corrected labels** export loaded as "
        f"`labels_override` under the same workspace name), because a decision holds for the "
        f"label it was made on. Those events are kept in the store, not shown or counted here.",
        icon="⚠️")


def render_status(snap, total: int) -> None:
    """Progress, then the last action's message or error."""
    render_progress(snap, total)
    if "rv_error" in _state():
        st.error(common.esc(_state().pop("rv_error")))
    if "rv_flash" in _state():
        st.caption(f"✓ {common.esc(_state().pop('rv_flash'))} · press **U** to undo")


@st.fragment
def review_view(ws, store, reviewer: str, table: pd.DataFrame, order: list[int],
                ranking: str, mode: str) -> None:
    """The item under review, its actions and the progress: a fragment.

    A decision (a click or a key) reruns only this part of the page, not the sidebar,
    the filters or the export (Streamlit's ``st.fragment``): less work for the server and
    for the browser per key. Decisions and statuses are read from the store again here;
    the ranking, the filters and ``order`` come from the last full run.
    """
    try:
        snap = store.snapshot(reviewer)  # one read: decisions, final decisions, counts
    except STORE_ERRORS as exc:
        st.error(f"Could not read the review store: {common.public_message(exc)}")
        return
    if live_due(snap):
        st.rerun(scope="app")  # swap in the re-ranked queue ahead (the claimed item stays)
    # the table is the last full run's (ranking, predictions); what a decision changes (the
    # item's status, the open count) is read from snap.finals: no per-key copy of N rows
    render_status(snap, len(ws.train))
    render_estimate()
    if mode == "My queue":
        render_queue(ws, store, reviewer, table, order, ranking, snap.decisions, snap.finals)
    else:
        render_browse(ws, store, reviewer, table, order, ranking, snap.decisions, snap.finals)


def ask_before_ranking(ws, method: Optional[str]) -> None:
    """A large workspace whose ranking is not kept (never computed, or made by other
    rankers' code): say so, with the CLI command that computes it ahead of time, and compute
    it only on the button (with a progress indicator); stops the page until then. Small
    workspaces fall through and compute it directly (well under a second)."""
    status = ws.ranking_status(method)
    if not status.expensive:
        return
    minutes = status.estimated_seconds / 60
    took = f"about {minutes:.0f} minutes" if minutes >= 1.5 else f"about {status.estimated_seconds:.0f} seconds"
    st.warning(
        f"The **{common.esc(status.name)}** ranking of this workspace's {status.rows:,} training examples is not "
        f"computed yet (or was made by an older version of the rankers). Computing it takes {took} on this "
        "server; the queue needs it.", icon=":material/hourglass_empty:")
    st.markdown("To compute it ahead of time (e.g. before reviewers arrive), run on the server:")
    st.code(status.command, language="bash")
    if not common.pressed("rv_compute_ranking", st.button("Compute it now", key="rv_compute_ranking",
                                                          type="primary")):
        st.stop()
    with st.status(f"Computing the {status.name} ranking ({took})…", expanded=False) as box:
        common.mislabel_table(ws, method)
        box.update(label="Ranking computed", state="complete")


@st.fragment(run_every=RENEW_SECONDS)
def keep_claim(store, reviewer: str) -> None:
    """Renew the claim while the page stays open; move on if the item was taken."""
    item = _state().get("rv_current")
    if _state().get("rv_mode", "My queue") != "My queue" or item is None:
        return
    try:
        got = store.claim_next(reviewer, [item], lease_seconds=LEASE_SECONDS)
    except STORE_ERRORS:
        return
    if got != item:
        _state().pop("rv_current", None)
        st.rerun(scope="app")


def main() -> None:
    common.ensure_router(keep=("rv_compute_ranking",))
    who = common.require("review", "review training labels")
    ws = common.current_workspace()
    st.title("Review")
    common.show_refusal()
    if ws is None:
        st.info("Open a workspace on the **Workspace** page first.")
        st.stop()
    reviewer = common.reviewer_name(who)
    try:
        store = common.review_store(ws)
    except STORE_ERRORS as exc:
        st.error(f"Could not open the review store: {common.public_message(exc)}")
        st.stop()
    follow_identity(store, reviewer)

    # first visit with ?item=N, or a link from another page (?item=N&goto=1): browse from that item
    if st.query_params.get("goto") == "1":
        del st.query_params["goto"]
        _state().pop("rv_mode", None)
    if "rv_mode" not in _state():
        param = st.query_params.get("item")
        if param is not None and str(param).isdigit() and int(param) < len(ws.train):
            _state()["rv_mode"] = "All items"
            _state()["rv_item"] = int(param)
            _state()["rv_pinned"] = True
        else:
            _state()["rv_mode"] = "My queue"

    if _state().get("rv_ranking") not in ws.mislabel_methods():
        _state()["rv_ranking"] = DEFAULT_RANKER  # first visit, or a ranking this version lacks
    choice = _state()["rv_ranking"]
    method = None if choice == DEFAULT_RANKER else choice
    if _state().get("rv_ranking_seen", choice) != choice:
        # another ranking: let go of the held item, so the queue starts at the new first one
        _state().pop("rv_current", None)
        try:
            store.release(reviewer)
        except STORE_ERRORS:
            pass
    _state()["rv_ranking_seen"] = choice
    ranking_name = method or DEFAULT_RANKER
    try:
        common.ensure_store(ws, "fast")
        if ws.ranking_needs_cp(method):
            common.ensure_store(ws, "cp")
        ask_before_ranking(ws, method)
        ranking_table = common.mislabel_table(ws, method)
        preds = common.train_predictions(ws)
    except (WorkspaceError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
        st.error(f"Could not rank the training examples: {common.public_message(exc)}")
        st.stop()
    try:
        other = store.other_data_decisions()
        carried = carry_over(ws, store, other)
        finals = store.final_decisions()
    except STORE_ERRORS as exc:
        st.error(f"Could not read the review store: {common.public_message(exc)}")
        st.stop()
    filters = sidebar_queue(ws, ranking_table)
    live_table = live_ranking(ws, method, ranking_table, finals)
    score_key = method or "default"
    if live_table is not ranking_table:
        ranking_table, ranking_name, score_key = live_table, f"{ranking_name}+live", f"{score_key}-live"
    score_range = score_filter(ranking_table, score_key)
    render_carry_over(ws, other, carried)

    # one row per training example, in ranking order
    table = review_table(ranking_table, preds, finals, len(ws.train))
    order = queue_order(table, given=filters["given"], suggested=filters["suggested"],
                        status=filters["status"], score_range=score_range)
    table = table.set_index("index", drop=False)

    mode = st.segmented_control("View", MODES, key="rv_mode", required=True,
                                label_visibility="collapsed") or "My queue"
    if mode != "My queue" and _state().pop("rv_claimed", False):
        try:
            store.release(reviewer)
        except STORE_ERRORS:
            pass
    if mode != "All items" and "item" in st.query_params:
        del st.query_params["item"]

    if mode in ("My queue", "All items"):
        review_view(ws, store, reviewer, table, order, ranking_name, mode)
        if mode == "My queue":
            keep_claim(store, reviewer)
        st.html(RELABEL_KEY_JS, unsafe_allow_javascript=True)
        st.html(RELABEL_BADGE_CSS)
    else:
        try:
            render_status(store.snapshot(reviewer), len(ws.train))
        except STORE_ERRORS as exc:
            st.error(f"Could not read the review store: {common.public_message(exc)}")
        render_conflicts(ws, store, who, reviewer, table, ranking_name)

    st.divider()
    render_export(ws, store, who, reviewer)


main()
