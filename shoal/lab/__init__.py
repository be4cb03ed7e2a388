"""The namespace lab (`shoal lab`): its interface is shoal.lab.netlab, over stage modules."""
