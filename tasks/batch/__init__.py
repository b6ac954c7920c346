"""The Batch API route: `route.run_batch` and the steps it is made of, the ledger, the wire formats,
the options and the admin commands. It calls Gemini only through `tasks.gemini`."""
