"""The Docker Engine API, served on a second Unix socket (/run/shoal/docker.sock).

A translation layer: every answer is read from the same store, through the same lookups
(manager/controlapi) as shoal's own API, and turned into Docker's JSON by translate/. Nothing
here keeps state or rules of its own.

    app          the socket's application: routing, the /v1.NN prefix, errors in Docker's shape
    versioning   API versions, the prefix, _ping and its headers
    errors       Docker's error body and status codes; shoal's errors translated
    filters      Docker's `filters` query parameter
    query        other query parameters, read as dockerd reads them
    access       which node may answer what (managers answer cluster reads)
    info         /version and /info
    swarm, nodes, services, tasks   the cluster reads
    unsupported  what Docker serves and this API does not yet: a 501 naming it
    translate/   shoal's objects as Docker's JSON (values: times, durations, versions;
                 nodes, services, tasks, swarm)
"""
