"""The web dashboard (`shoal dashboard`): a page served by a manager's shoald on
127.0.0.1 only, opened by a one-time token link, that shows the cluster live and offers a few
safe actions.

auth.py: the one-time tokens, the sessions and the CSRF rule; login.py: the page a browser
gets without a session (a form for the token, no cluster data); source.py: reads and actions
through this node's own local API (so writes are checked and forwarded to the leader as any
CLI write is); snapshot.py: the JSON the page renders and the chart's history; server.py: the
aiohttp app (page, SSE stream, logs, actions); api.py: POST /dashboard on the local socket.
"""
