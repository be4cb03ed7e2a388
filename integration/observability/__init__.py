"""Issue 19 (observability) proven on one lab of 3 managers + 3 workers (conftest.py).

The modules share that lab and run in the order of their names; each creates services of its
own names, removes them when it ends, and leaves every node active and every manager reachable.
test_5_events_failover.py kills the leader, so it restarts it and waits until it is Reachable
again (and runs last, so a failure there cannot spoil the others).
"""
