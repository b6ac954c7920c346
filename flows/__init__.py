"""The flows of indexflow, installed as `indexflow.flows`."""

# Imported as a top-level `flows` (the repository root on sys.path), these modules would load twice
# under two names, with two copies of every class; fail loudly instead.
if __name__ != "indexflow.flows":
    raise ImportError("import indexflow.flows, not flows: this folder is installed as indexflow.flows")
