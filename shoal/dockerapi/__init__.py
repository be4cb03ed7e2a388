"""The Docker Engine API, served on a second Unix socket (/run/shoal/docker.sock).

A translation layer: every answer is read from the same store, through the same lookups
(manager/controlapi) as shoal's own API, and turned into Docker's JSON by translate/; every
write is translated into shoal's spec and run by the control API's own functions, on the
leader (leader.py forwards it there, in shoal's words, from a follower). Nothing here keeps
state or rules of its own, but for the last events kept for `docker events --since`.

    app          the socket's application: routing, the /v1.NN prefix, errors in Docker's shape
    remote       the same app over TLS with client certificates (--docker-tcp), and shoal's
                 own API under /shoal/ on that port
    versioning   API versions, the prefix, _ping and its headers
    errors       Docker's error body and status codes; shoal's errors translated
    filters      Docker's `filters` query parameter
    query        other query parameters, read as dockerd reads them
    access       which node may answer what (managers answer cluster reads)
    info         /version and /info
    swarm        swarm inspect, update and unlockkey
    swarm_membership   swarm init, join, leave and unlock (this node itself)
    nodes, node_writes   nodes: reads; update and delete
    services, tasks      the cluster reads
    service_writes   services create, update (and rollback=previous), delete; the spec as
                 sent is kept for insertDefaults=false and PreviousSpec
    registry_auth    X-Registry-Auth read strictly (credentials kept beside the service)
    logs         service and task logs as Docker's multiplexed frames
    data_objects, networks   secrets and configs, networks: reads and writes
    containers, images   this node's containers and images
    distribution an image's digest and platforms from its registry
    events       the swarm events of the manager's replica, streamed
    leader       writes run on the leader, or forwarded to it as shoal's own socket does
    unsupported  what Docker serves and this API does not yet: a 501 naming it
    translate/   shoal's objects as Docker's JSON (values: times, durations, versions;
                 nodes, services, tasks, swarm, objects, containers, images, events), and back
                 (reader: Docker's JSON read strictly, naming fields; service_spec: a
                 ServiceSpec as shoal's; objects: secret, config and network bodies; nodes
                 and swarm: NodeSpec, SwarmSpec, init and join requests)
"""
