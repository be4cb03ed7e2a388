"""Container networking on a worker: VXLAN overlays, load balancing, service discovery."""
