"""The cluster's event stream (`shoal events`, Docker's /events): every store change this
manager's replica applies, as events with what changed, and leader elections, kept in a bounded
history that subscribers follow.

model.py (the event), diff.py (a store change as events), filters.py (--filter), recorder.py
(the history and the live subscriptions, one per manager).
"""
