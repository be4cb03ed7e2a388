"""Stacks: Compose files read as the Compose Specification reads them, turned into shoal's
services, networks, secrets, configs and volumes, and deployed through the control API.

The CLI does this work, as the docker CLI does for `docker stack deploy`: the managers only ever
see ordinary service, network, secret and config requests, labelled with the stack's namespace.
"""
