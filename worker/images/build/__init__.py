"""`shoal image build`: Dockerfiles parsed (dockerfile.py, ignore.py) and built into the
node's image store (builder.py; RUN in runc: runstep.py; COPY/ADD: sources.py, copyin.py;
layers: mounts.py, difftar.py; disk work off the event loop: helper.py; config-only
instructions: metadata.py; the step cache: state.py)."""
