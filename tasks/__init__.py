"""The tasks of indexflow, installed as `indexflow.tasks`."""

# Imported as a top-level `tasks` (the repository root on sys.path), these modules would load twice
# under two names, with two copies of every class; fail loudly instead.
if __name__ != "indexflow.tasks":
    raise ImportError("import indexflow.tasks, not tasks: this folder is installed as indexflow.tasks")
