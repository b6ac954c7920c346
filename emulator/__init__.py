"""A local Gemini API emulator that the unmodified google-genai SDK talks to.

It serves the embedding surface of the Gemini Developer API (online `batchEmbedContents` /
`embedContent`, Batch API jobs, Files API) with Google's error shapes, rate limits, injectable
faults and batch-job lifecycles. Its vectors are lexical (feature hashing), not Gemini's.
Start it with `python -m indexflow.emulator` (emulator.cli) or in process with
`emulator.server.running_emulator()`. It imports nothing from `tasks/` or `flows/`.
"""
